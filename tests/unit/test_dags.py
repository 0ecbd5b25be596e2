"""DAG integrity: every DAG imports cleanly, without importing dbt, Feast or MLflow, and is wired as
the platform promises (gate first, retries on service tasks, a timeout on every task)."""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streamflow import pipeline
from streamflow.orchestration import MATERIALIZE_DAG, MONITOR_DAG, MONTHLY_DAG
from streamflow.warehouse import runner
from tests.conftest import ROOT, STREAMFLOW, make_settings

HEAVY = ("dbt", "feast", "mlflow", "sklearn", "evidently")

PROBE = textwrap.dedent(
    """
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    bag = DagBag(dag_folder=sys.argv[1])
    out = {"errors": {k: str(v) for k, v in bag.import_errors.items()},
           "heavy": [m for m in __HEAVY__ if m in sys.modules], "dags": {}}
    for dag_id, dag in bag.dags.items():
        tasks = {}
        for t in dag.tasks:
            tasks[t.task_id] = {
                "upstream": sorted(t.upstream_task_ids),
                "retries": t.retries,
                "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                "kind": type(t).__name__,
                "trigger_rule": getattr(t.trigger_rule, "value", str(t.trigger_rule)),
                "on_warning": getattr(getattr(t, "on_warning_callback", None), "__name__", None),
            }
        params = {}
        for k in dag.params:
            p = dag.params.get_param(k)
            params[k] = {"default": p.value, "description": p.description, **p.schema}
        out["dags"][dag_id] = {"tasks": tasks, "schedule": str(getattr(dag.timetable, "expression", "")),
                               "params": params}
    print("RESULT" + json.dumps(out))
    """
).replace("__HEAVY__", repr(HEAVY))


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    home = tmp_path_factory.mktemp("dags_home")
    settings = make_settings(home, dbt_target_path=home / "dbt_target")
    runner.parse(settings)  # the manifest the DAGs are built from (no database needed)
    env = _offline_environment(settings)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(settings.dags_dir)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def _offline_environment(settings):
    """Airflow's environment for parsing only: no database server is needed or started."""
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(settings.home / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_dir),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
            "STREAMFLOW_HOME": str(settings.home),
            "STREAMFLOW_DBT_TARGET_PATH": str(settings.dbt_target_path),
            "STREAMFLOW_PG_PORT": str(settings.pg_port),
        }
    )
    env.pop("STREAMFLOW_DATABASE_URL", None)
    return env


def test_every_dag_imports_without_errors(parsed):
    assert parsed["errors"] == {}
    assert set(parsed["dags"]) == {MONTHLY_DAG, MATERIALIZE_DAG, MONITOR_DAG}


def test_parsing_the_dags_imports_neither_dbt_nor_feast_nor_mlflow(parsed):
    assert parsed["heavy"] == []


def test_every_task_has_a_timeout_and_service_tasks_retry(parsed):
    for dag_id, dag in parsed["dags"].items():
        for task_id, task in dag["tasks"].items():
            if task["kind"] in (
                "EmptyOperator",
                "_BranchPythonDecoratedOperator",
                "_ShortCircuitDecoratedOperator",
                "TriggerDagRunOperator",
            ):
                continue
            assert task["timeout"], f"{dag_id}.{task_id} has no timeout"
    monthly = parsed["dags"][MONTHLY_DAG]["tasks"]
    for task_id in ("feast_apply", "materialize", "train", "promote", "batch_score", "drift", "prepare_warehouse"):
        assert monthly[task_id]["retries"] > 0, task_id
    # data checks give the same answer on a retry
    for task_id, task in monthly.items():
        if (task_id.startswith(("quality_gate.", "dbt.")) or task_id == "ingest") and task["kind"] != "EmptyOperator":
            assert task["retries"] == 0, task_id


def _ancestors(tasks: dict, task_id: str) -> set[str]:
    seen, todo = set(), list(tasks[task_id]["upstream"])
    while todo:
        t = todo.pop()
        if t not in seen:
            seen.add(t)
            todo.extend(tasks[t]["upstream"])
    return seen


def test_the_quality_gate_runs_before_any_snapshot_or_mart_and_the_cycle_is_in_order(parsed):
    tasks = parsed["dags"][MONTHLY_DAG]["tasks"]
    gate = {t for t in tasks if t.startswith("quality_gate.")}
    assert {
        f"quality_gate.raw_{t}"
        for t in (
            "users",
            "subscriptions",
            "sessions",
            "payments",
            "tickets",
            "labels",
            # the aggregated layout's four tables in one task (empty in the months of event drops)
            "aggregated",
            "load_log",
        )
    } == gate
    # a gate rule of severity warn passes its task (dbt: status warn, success) and is logged
    assert {tasks[t]["on_warning"] for t in gate} == {"gate_warnings"}
    dbt_nodes = [t for t in tasks if t.startswith("dbt.")]
    assert any("snap_subscriptions" in t for t in dbt_nodes) and any("usage_agg_30d" in t for t in dbt_nodes)
    for t in dbt_nodes:
        assert gate <= _ancestors(tasks, t), f"{t} may run before the whole gate passed"
    order = [
        "ingest",
        "prepare_warehouse",
        "record_warehouse_month",
        "feast_apply",
        "materialize",
        "train",
        "promote",
        "batch_score",
        "drift",
        "report_success",
    ]
    for earlier, later in zip(order, order[1:], strict=False):
        assert earlier in _ancestors(tasks, later), f"{earlier} must run before {later}"
    assert tasks["report_failure"]["trigger_rule"].endswith("one_failed")


def test_the_monthly_dag_takes_a_month_of_the_aggregated_layout_by_params(parsed):
    params = parsed["dags"][MONTHLY_DAG]["params"]
    assert params["layout"]["default"] == "events" and params["layout"]["enum"] == ["events", "aggregated"]
    assert "aggregated" in params["as_of"]["description"] and params["as_of"]["default"] is None


def test_resolving_the_month_of_an_aggregated_folder_needs_its_month_end(tmp_path):
    folder = tmp_path / "month_000"
    folder.mkdir()
    month = pipeline.resolve_month(str(folder), "2024-01-31", "aggregated")
    assert month == {"as_of": "2024-01-31", "drop": str(folder.resolve()), "layout": "aggregated"}
    refusals = {
        "needs its folder and its month end": (str(folder), None, "aggregated"),
        "not a month end": (str(folder), "2024-01-15", "aggregated"),
        "does not exist": (str(tmp_path / "nowhere"), "2024-01-31", "aggregated"),
        "layout must be one of events, aggregated": (str(folder), "2024-01-31", "legacy"),
    }
    for message, args in refusals.items():
        with pytest.raises(pipeline.StepRefused, match=message):
            pipeline.resolve_month(*args)
    # an event drop still names its month in its manifest
    (folder / "manifest.json").write_text(json.dumps({"as_of": "2024-01-31"}))
    assert pipeline.resolve_month(str(folder))["as_of"] == "2024-01-31"


def test_materialization_runs_every_30_minutes_and_the_monitor_can_trigger_a_retrain(parsed):
    assert "*/30 * * * *" in parsed["dags"][MATERIALIZE_DAG]["schedule"]
    monitor = parsed["dags"][MONITOR_DAG]["tasks"]
    assert monitor["trigger_retraining"]["kind"] == "TriggerDagRunOperator"
    assert "check_drift" in _ancestors(monitor, "trigger_retraining")


def _image_layout(dest: Path) -> Path:
    """The repository as the Dockerfile's `COPY . /app` lays it out: without what .dockerignore keeps out."""
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]

    def ignored(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).relative_to(ROOT)
        return {
            n for n in names if any(fnmatch.fnmatch(str(rel / n), p.removeprefix("**/")) or n == p for p in patterns)
        }

    shutil.copytree(ROOT, dest, ignore=ignored)
    return dest


def test_the_dags_import_in_the_image_layout_with_the_manifest_the_image_build_parses(tmp_path):
    app = _image_layout(tmp_path / "app")
    assert not (app / "dbt_project" / "target").exists()  # the sources alone carry no manifest
    (run,) = [ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if "streamflow dbt parse" in ln]
    words = shlex.split(run.removeprefix("RUN "))
    assignments = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    command = [w for w in words if "=" not in w]
    assert command[:3] == [".venv/bin/streamflow", "dbt", "parse"]
    runtime = (ROOT / "Dockerfile").read_text().split("AS runtime", 1)[1]
    assert "COPY --from=build" in runtime and "/app/dbt_project/target/manifest.json" in runtime
    settings = make_settings(tmp_path / "home", project_dir=app)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFLOW_")}
    env.update(assignments, STREAMFLOW_PROJECT_DIR=str(app), STREAMFLOW_HOME=str(settings.home))
    built = subprocess.run(
        [str(STREAMFLOW), *command[1:]], cwd=app, env=env, capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert (app / "dbt_project" / "target" / "manifest.json").is_file()

    # the DAG processor of the image: the project's dags folder, the default target path, no database
    env = _offline_environment(settings)
    env.pop("STREAMFLOW_DBT_TARGET_PATH")
    env.update(STREAMFLOW_PROJECT_DIR=str(app), AIRFLOW__CORE__DAGS_FOLDER=str(app / "airflow" / "dags"))
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(app / "airflow" / "dags")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))[len("RESULT") :])
    assert result["errors"] == {}
    assert any(t.startswith("dbt.") for t in result["dags"][MONTHLY_DAG]["tasks"])
