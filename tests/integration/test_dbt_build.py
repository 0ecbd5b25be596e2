"""`streamflow build` over time: reruns, new months, re-ingested months, rebuilt history, warnings,
plain per-month dbt runs (as Airflow does them), the docs site and the SQL style."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from datetime import date, timedelta

import httpx
import pandas as pd
import pytest

from streamflow.core.db import connect
from streamflow.core.env import tool_environment
from streamflow.drops.ingest import ingest
from streamflow.warehouse.build import build, drop_version, record_built
from tests.conftest import ROOT, STREAMFLOW, WAREHOUSE_MONTHS, free_port, run_cli, settings_env
from tests.integration.dbt_reference import (
    MART_TABLES,
    PLAN_COLUMNS,
    assert_frames_equal,
    copy_drop,
    expected_marts,
    expected_snapshot,
    read_drops,
    read_table,
    table_digests,
    warehouse_digests,
)

pytestmark = pytest.mark.integration
FEATURE_MARTS = ["subscriptions_profile", "usage_agg_30d", "payments_agg_90d", "support_agg_90d"]


def _assert_marts_match(settings, drop_dirs) -> None:
    reference = expected_marts(read_drops(drop_dirs))
    with connect(settings) as conn:
        for mart in FEATURE_MARTS:
            actual = read_table(conn, f"marts.{mart}", "as_of, user_id")
            assert_frames_equal(actual, reference[mart][list(actual.columns)], ["as_of", "user_id"])
        labels = read_table(conn, "marts.labels", "period_start, user_id")
        assert_frames_equal(labels, reference["labels"][list(labels.columns)], ["period_start", "user_id"])


def test_a_rebuild_from_the_same_drops_is_swapped_in_whole_identical_with_the_live_schemas_privileges(
    session_drops, warehouse_copy
):
    """Reloading the same drops rebuilds from the raw history: one full refresh built beside the live
    schemas and swapped in, every snapshot and mart identical, other roles' privileges kept."""
    settings = warehouse_copy("dbt_rebuild")
    role = "swap_reader_test"
    with connect(settings, autocommit=True) as conn:
        conn.execute(f"drop role if exists {role}")
        conn.execute(f"create role {role} nologin")
        conn.execute(f"grant usage on schema marts, snapshots to {role}")
        conn.execute(f"grant select on all tables in schema marts to {role}")
        conn.execute(f"alter default privileges in schema marts grant select on tables to {role}")
        conn.execute("create schema analyst_work")  # an analyst's own view over a mart
        conn.execute("create view analyst_work.profiles as select user_id, as_of from marts.subscriptions_profile")
        before = warehouse_digests(conn)
        old_oid = conn.execute("select 'marts.labels'::regclass::oid").fetchone()[0]
    try:
        ingest(settings, session_drops[:WAREHOUSE_MONTHS], rebuild=True)
        result = build(settings)
        assert result.full_refresh and len(result.months) == WAREHOUSE_MONTHS
        assert "rebuilding from the raw history" in result.reason
        # the analyst's view keeps the tables it was made on, which stay, named, until it is recreated
        assert any("analyst_work.profiles" in w and "marts__replaced" in w for w in result.warnings), result.warnings
        with connect(settings) as conn:
            assert warehouse_digests(conn) == before
            assert conn.execute("select 'marts.labels'::regclass::oid").fetchone()[0] != old_oid  # new tables
            privileges = conn.execute(
                f"""select has_schema_privilege('{role}', 'marts', 'usage'),
                           has_schema_privilege('{role}', 'snapshots', 'usage'),
                           has_table_privilege('{role}', 'marts.labels', 'select'),
                           has_table_privilege('{role}', 'marts.usage_agg_30d', 'select'),
                           has_table_privilege('{role}', 'marts.labels', 'insert')"""
            ).fetchone()
            assert privileges == (True, True, True, True, False)
            schemas = {r[0] for r in conn.execute("select nspname from pg_namespace")}
            assert "marts__replaced" in schemas and not {"marts__rebuild", "snapshots__replaced"} & schemas
            conn.execute("drop view analyst_work.profiles")
        again = build(settings)
        assert again.up_to_date and not again.months
        # the next full refresh finds nothing in the way and leaves nothing behind
        assert not build(settings, full_refresh=True).warnings
        with connect(settings) as conn:
            assert warehouse_digests(conn) == before
            names = [r[0] for r in conn.execute("select nspname from pg_namespace")]
            assert not [n for n in names if n.endswith(("__rebuild", "__replaced"))]
    finally:
        with connect(settings, autocommit=True) as conn:
            conn.execute(f"drop owned by {role}")
            conn.execute(f"drop role if exists {role}")


def test_a_new_month_is_built_alone_and_earlier_months_keep_their_rows(session_drops, warehouse_copy):
    settings = warehouse_copy("dbt_next_month")
    next_drop = session_drops[WAREHOUSE_MONTHS]
    with connect(settings) as conn:
        newest = conn.execute("select max(as_of) from raw.load_log").fetchone()[0]
        stamp = f"'{newest} 00:00:00+00'::timestamptz"
        earlier = table_digests(conn, MART_TABLES[:-1], where=f"as_of <= {stamp}")

    ingest(settings, [next_drop])
    result = build(settings)

    assert len(result.months) == 1 and result.months[0] > newest and not result.full_refresh
    with connect(settings) as conn:
        assert table_digests(conn, MART_TABLES[:-1], where=f"as_of <= {stamp}") == earlier
    _assert_marts_match(settings, session_drops[: WAREHOUSE_MONTHS + 1])


def test_every_mart_and_snapshot_has_fresh_planner_statistics_after_a_build(session_drops, warehouse_copy):
    # The point-in-time joins that read the marts right after a build are planned from these
    # statistics; a month planned on last month's picks nested loops and runs for minutes.
    settings = warehouse_copy("dbt_statistics")
    ingest(settings, [session_drops[WAREHOUSE_MONTHS]])
    with connect(settings) as conn:
        started = conn.execute("select now()").fetchone()[0]
    build(settings)
    with connect(settings) as conn:
        rows = conn.execute(
            "select s.schemaname || '.' || s.relname, s.last_analyze, c.reltuples, s.n_live_tup "
            "from pg_stat_user_tables s join pg_class c on c.oid = s.relid "
            "where s.schemaname in ('marts', 'snapshots')"
        ).fetchall()
        analyzed = {name: (last, reltuples) for name, last, reltuples, _n in rows}
        counts = {name: conn.execute(f"select count(*) from {name}").fetchone()[0] for name in analyzed}
    expected = {f"marts.{m}" for m in [*FEATURE_MARTS, "labels"]} | {
        "snapshots.snap_users",
        "snapshots.snap_subscriptions",
    }
    assert expected <= set(analyzed)
    for name in expected:
        last, reltuples = analyzed[name]
        assert last is not None and last >= started, f"{name} was not analyzed by the build"
        assert reltuples == counts[name], f"{name}: planner sees {reltuples} rows, table has {counts[name]}"


def test_a_reingested_month_rebuilds_snapshots_and_marts_from_the_raw_history(session_drops, warehouse_copy, tmp_path):
    settings = warehouse_copy("dbt_reingest")
    newest = session_drops[WAREHOUSE_MONTHS - 1]
    subs = pd.read_csv(newest / "subscriptions.csv", dtype=str)
    user = subs.loc[subs.contract_type == "Month-to-month", "user_id"].iloc[0]

    def upgrade(frame):
        frame = frame.copy()
        frame.loc[frame.user_id == user, "contract_type"] = "Two year"
        return frame

    def longer_sessions(frame):
        frame = frame.copy()
        frame.loc[frame.user_id == user, "minutes"] = "600.00"
        return frame

    changed = copy_drop(newest, tmp_path / newest.name, {"subscriptions": upgrade, "sessions": longer_sessions})
    ingest(settings, [changed])
    result = build(settings)

    assert result.full_refresh and str(result.months[-1]) in result.reason
    drops = [*session_drops[: WAREHOUSE_MONTHS - 1], changed]
    _assert_marts_match(settings, drops)
    with connect(settings) as conn:
        versions = conn.execute(
            "select contract_type from snapshots.snap_subscriptions where user_id = %s order by dbt_valid_from", (user,)
        ).fetchall()
        snapshot = read_table(conn, "snapshots.snap_subscriptions", "user_id, dbt_valid_from")
    assert versions[-1] == ("Two year",)
    expected = expected_snapshot(read_drops(drops), "subscriptions", PLAN_COLUMNS)
    assert len(snapshot) == len(expected)


def test_a_stale_warehouse_is_reported_as_a_warning_and_the_build_still_succeeds(warehouse_copy):
    settings = warehouse_copy("dbt_stale")
    with connect(settings) as conn:  # as if every drop had been loaded and built 40 days ago
        conn.execute("update raw.load_log set loaded_at = loaded_at - interval '40 days'")
        for as_of, sha, loaded_at in conn.execute("select as_of, manifest_sha256, loaded_at from raw.load_log"):
            conn.execute(
                "update analytics.dbt_build_log set drop_version = %s where as_of = %s",
                (drop_version(sha, loaded_at), as_of),
            )
        conn.commit()
        before = warehouse_digests(conn)

    proc = run_cli(settings, "build")

    assert "warning: freshness of raw.load_log" in proc.stderr and "40 days ago" in proc.stderr
    assert "nothing to build" in proc.stdout
    with connect(settings) as conn:
        assert warehouse_digests(conn) == before


def test_plain_dbt_one_month_at_a_time_builds_what_streamflow_build_builds(session_drops, warehouse_copy):
    """Airflow runs the same nodes per month with a var; rerunning a month changes nothing, and once
    recorded, `streamflow build` has nothing left to do."""
    settings = warehouse_copy("dbt_per_month")
    next_drop = session_drops[WAREHOUSE_MONTHS]
    ingest(settings, [next_drop])
    as_of = json.loads((next_drop / "manifest.json").read_text())["as_of"]
    month_vars = json.dumps({"as_of": as_of})

    run_cli(settings, "dbt", "test", "--select", "source:raw", "--vars", month_vars)
    run_cli(settings, "dbt", "build", "--exclude", "source:raw", "--vars", month_vars)

    _assert_marts_match(settings, session_drops[: WAREHOUSE_MONTHS + 1])
    with connect(settings) as conn:
        before = warehouse_digests(conn)
    run_cli(settings, "dbt", "build", "--exclude", "source:raw", "--vars", month_vars)
    with connect(settings) as conn:
        assert warehouse_digests(conn) == before
    record_built(settings, date.fromisoformat(as_of))
    assert build(settings).up_to_date


def test_dbt_refuses_a_month_that_is_not_loaded_and_snapshots_refuse_to_go_back(warehouse_copy):
    settings = warehouse_copy("dbt_guards")
    with connect(settings) as conn:
        first, newest = conn.execute("select min(as_of), max(as_of) from raw.load_log").fetchone()
        before = warehouse_digests(conn)

    unknown = run_cli(
        settings, "dbt", "build", "--vars", json.dumps({"as_of": str(newest + timedelta(days=31))}), check=False
    )
    backwards = run_cli(settings, "dbt", "snapshot", "--vars", json.dumps({"as_of": str(first)}), check=False)

    assert unknown.returncode != 0 and "is not a loaded drop" in unknown.stdout
    assert backwards.returncode != 0 and f"already holds drop {newest}" in backwards.stdout
    with connect(settings) as conn:
        assert warehouse_digests(conn) == before


def test_cli_build_names_a_month_that_is_not_loaded(warehouse_copy):
    settings = warehouse_copy("dbt_guards")
    proc = run_cli(settings, "build", "--as-of", "2031-01-31", check=False)
    assert proc.returncode == 1
    assert "as_of 2031-01-31 is not a loaded drop. Loaded: 2024-01-31" in " ".join(proc.stderr.split())


def test_dbt_unit_tests_of_the_windows_and_scd2_pass(built_warehouse):
    proc = run_cli(built_warehouse, "dbt", "test", "--select", "test_type:unit")
    assert "ERROR=0" in proc.stdout and "FAIL" not in proc.stdout
    for name in (
        "usage_windows_include_their_first_instant_and_exclude_their_end",
        "failed_payments_count_the_90_day_window_across_drops",
        "support_window_counts_open_tickets_and_averages_resolved_ones",
        "profile_follows_scd2_validity_and_drops_cancelled_users",
    ):
        assert re.search(rf"PASS \w+::{name}", proc.stdout), name


def test_docs_are_generated_and_served_on_localhost(built_warehouse):
    port = free_port()
    env = settings_env(built_warehouse)
    proc = subprocess.Popen(
        [STREAMFLOW, "docs", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        page = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/index.html", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert page is not None and page.status_code == 200, proc.stderr.read() if proc.poll() is not None else ""
        catalog = httpx.get(f"http://127.0.0.1:{port}/catalog.json", timeout=5).json()
        manifest = httpx.get(f"http://127.0.0.1:{port}/manifest.json", timeout=5).json()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert "model.streamflow.usage_agg_30d" in catalog["nodes"]
    assert catalog["nodes"]["model.streamflow.usage_agg_30d"]["metadata"]["schema"] == "marts"
    assert {"exposure.streamflow.feast_churn_model_v1", "exposure.streamflow.streamflow_api"} <= set(
        manifest["exposures"]
    )


def test_plain_dbt_works_after_sourcing_the_printed_environment(built_warehouse):
    env = settings_env(built_warehouse)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env['PATH']}"
    script = 'eval "$(streamflow stack env --show-secrets)" && cd / && dbt test --select subscriptions_profile --quiet'
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exported = tool_environment(built_warehouse)
    assert exported["DBT_PROFILES_DIR"] == str(ROOT / "dbt_project")
    assert exported["DBT_PROJECT_DIR"] == str(ROOT / "dbt_project")


def test_the_sql_passes_sqlfluff_with_the_dbt_templater(built_warehouse):
    env = {**settings_env(built_warehouse), **tool_environment(built_warehouse)}
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "sqlfluff"), "lint", "models", "--nocolor"],
        cwd=ROOT / "dbt_project",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "FAIL" not in proc.stdout


def test_cli_build_says_in_one_line_what_to_fix_when_the_dbt_project_does_not_parse(warehouse_copy, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "dbt_project", project / "dbt_project", ignore=shutil.ignore_patterns("target", "logs"))
    model = project / "dbt_project" / "models" / "marts" / "labels.sql"
    model.write_text(model.read_text() + "\n{{ config(materialized= }}\n")
    settings = warehouse_copy("dbt_guards").model_copy(update={"project_dir": project})

    proc = run_cli(settings, "build", check=False)

    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "the dbt project does not parse" in errors[0]
    assert "models/marts/labels.sql" in errors[0]
    assert "next: fix the file it names" in proc.stderr and "streamflow dbt parse" in proc.stderr
