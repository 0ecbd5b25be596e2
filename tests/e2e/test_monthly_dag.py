"""streamflow_monthly through Airflow (`streamflow run --drop`), on a real PostgreSQL with real dbt,
Feast and MLflow: two good months end with a champion and online features; a bad drop stops at the
quality gate and leaves marts, the online store and the champion exactly as they were."""

from __future__ import annotations

import json

import pytest

from streamflow.core.db import connect
from streamflow.core.stack import EmbeddedPostgres
from streamflow.drops.generator.run import generate
from streamflow.orchestration import MATERIALIZE_DAG, MONITOR_DAG, run_dag
from tests.conftest import make_settings, run_cli, server_home
from tests.integration.dbt_reference import copy_drop, warehouse_digests

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A platform of its own (server, Airflow metadata, MLflow store, Feast registry) and three drops."""
    drops = tmp_path_factory.mktemp("dag_drops")
    generate(drops, months=3, users=300, seed=11)
    with server_home("streamflow-dag-") as home:
        settings = make_settings(home, dbt_target_path=home / "dbt_target")
        EmbeddedPostgres(settings).up()
        yield settings, sorted(drops.glob("month_*"))


def run_month(settings, drop, check=True):
    """`streamflow run --drop DROP --json`: (exit code, the run's JSON summary)."""
    proc = run_cli(settings, "run", "--drop", str(drop), "--json", check=check, timeout=900)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def online_fingerprint(settings) -> str:
    with connect(settings) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "select format('%I.%I', schemaname, tablename) from pg_tables "
                "where schemaname = 'feast_online' order by 1"
            )
        ]
        assert tables, "no online tables"
        parts = []
        for t in tables:
            parts.append(
                conn.execute(
                    f"select coalesce(md5(string_agg(x::text, ',' order by x::text)), '') from {t} x"
                ).fetchone()[0]
            )
        return "|".join(parts)


def test_two_months_through_airflow_end_with_a_champion_and_online_features(stack):
    settings, drops = stack
    _, first = run_month(settings, drops[0])
    tasks = first["tasks"]
    assert first["state"] == "success"
    assert tasks["ingest"] == "success" and tasks["materialize"] == "success"
    assert tasks["train"] == "skipped"  # no labelled period yet: labels arrive with the next drop

    _, second = run_month(settings, drops[1])
    tasks = second["tasks"]
    assert second["state"] == "success"
    for task in (
        "ingest",
        "quality_gate.raw_sessions",
        "record_warehouse_month",
        "feast_apply",
        "materialize",
        "train",
        "promote",
        "batch_score",
        "drift",
        "report_success",
    ):
        assert tasks[task] == "success", (task, second)
    assert all(
        state == "success"
        for t, state in tasks.items()
        if t.startswith(("dbt.", "quality_gate.")) and not t.endswith("at_as_of_model_build")
    ), tasks

    # every pipeline step of the run logged its wall time and its process's peak memory
    steps = second["steps"]
    for task in ("ingest", "feast_apply", "materialize", "train", "promote", "batch_score", "drift"):
        assert steps[task]["status"] == "success", (task, steps)
        assert steps[task]["seconds"] > 0 and steps[task]["peak_rss_mb"] > 0, (task, steps[task])
    assert steps["train"]["peak_rss_mb"] >= steps["train"]["start_rss_mb"] > 0

    model = json.loads(run_cli(settings, "model", "show", "--json").stdout)
    assert model["champion"]["version"]
    with connect(settings) as conn:
        user = conn.execute(
            "select user_id from marts.subscriptions_profile where as_of = "
            "(select max(as_of) from marts.subscriptions_profile) order by user_id limit 1"
        ).fetchone()[0]
        scored = conn.execute("select count(*) from ml.churn_scores").fetchone()[0]
        runs = conn.execute("select status from ops.pipeline_runs where pipeline = 'streamflow_monthly'").fetchall()
    assert scored > 0
    assert sorted(r[0] for r in runs) == ["success", "success"]
    online = run_cli(settings, "features", "get", user)
    assert user in online.stdout and "2024-02-29" in online.stdout


def test_the_scheduled_materialization_dag_keeps_the_newest_month_online(stack):
    settings, _ = stack
    before = online_fingerprint(settings)
    result = run_dag(settings, MATERIALIZE_DAG, {})
    states = {t.task_id: t.state for t in result.tasks}
    assert result.state == "success", (states, result.log_file)
    assert states == {"materialize": "success", "report_success": "success", "report_failure": "skipped"}
    assert online_fingerprint(settings) == before  # the newest month is online already: a no-op
    with connect(settings) as conn:
        runs = conn.execute("select status from ops.pipeline_runs where pipeline = %s", (MATERIALIZE_DAG,)).fetchall()
    assert [r[0] for r in runs] == ["success"]


def test_a_bad_drop_stops_at_the_gate_and_changes_nothing_downstream(stack, tmp_path):
    settings, drops = stack
    with connect(settings) as conn:
        marts_before = warehouse_digests(conn)
    online_before = online_fingerprint(settings)
    champion_before = json.loads(run_cli(settings, "model", "show", "--json").stdout)["champion"]["version"]

    def negative_minutes(frame):
        frame = frame.copy()
        frame.loc[:2, "minutes"] = "-5.00"
        return frame

    bad = copy_drop(drops[2], tmp_path / drops[2].name, {"sessions": negative_minutes})
    code, run = run_month(settings, bad, check=False)

    assert code == 1 and run["state"] == "failed"
    tasks = run["tasks"]
    assert tasks["ingest"] == "success"  # the file is well-formed; the content is what the gate refuses
    assert tasks["quality_gate.raw_sessions"] == "failed"
    assert tasks["report_failure"] == "success"
    for task, outcome in tasks.items():
        if task.startswith("dbt.") or task in (
            "record_warehouse_month",
            "feast_apply",
            "materialize",
            "train",
            "promote",
            "batch_score",
            "drift",
            "report_success",
        ):
            assert outcome in ("upstream_failed", "skipped"), (task, outcome)
    with connect(settings) as conn:
        assert warehouse_digests(conn) == marts_before
        last = conn.execute(
            "select status from ops.pipeline_runs where pipeline = 'streamflow_monthly' "
            "order by started_at desc limit 1"
        ).fetchone()[0]
    assert last == "failed"
    assert online_fingerprint(settings) == online_before
    assert json.loads(run_cli(settings, "model", "show", "--json").stdout)["champion"]["version"] == champion_before


def test_the_monitor_dag_compares_the_two_newest_built_months(stack):
    # Runs after the bad drop: its month is loaded but was stopped at the gate, so it has no
    # features; the monitor compares the two newest months that were built.
    settings, _ = stack
    with connect(settings) as conn:
        started = conn.execute("select now()").fetchone()[0]
    result = run_dag(settings, MONITOR_DAG, {})
    states = {t.task_id: t.state for t in result.tasks}
    assert result.state == "success", (states, result.log_file)
    assert states["check_drift"] == "success" and states["needs_retraining"] == "success"
    with connect(settings) as conn:
        compared = conn.execute(
            "select reference_as_of, current_as_of, retrain from ops.drift_reports where created_at >= %s",
            (started,),
        ).fetchall()
    assert len(compared) == 1, compared
    reference, current, retrain = compared[0]
    assert (reference.isoformat(), current.isoformat()) == ("2024-01-31", "2024-02-29")
    assert states["trigger_retraining"] == ("success" if retrain else "skipped")
