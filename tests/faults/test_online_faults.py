"""The online store under faults: a materialization killed halfway, then rerun, equals a clean one; and a
materialization started while the next month builds waits for the build and never serves a half-built month.

The steps run as the real `streamflow` command, stopped at fault points (streamflow/core/faults.py). The
warehouses are copies of the session's (January to March built) with April ingested, and built where a test
needs it; each has a Feast registry database of its own and the PostgreSQL online store."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import psycopg
import pytest

from streamflow.core.db import connect
from streamflow.core.lock import pipeline_lock
from streamflow.core.names import FEATURE_MARTS
from streamflow.core.stack import EmbeddedPostgres
from streamflow.drops.ingest import ingest
from streamflow.features import apply, materialize
from streamflow.features.online import OnlineReader
from streamflow.features.online_store import entity_key_bytes, online_table
from streamflow.features.store import business_clock, feast_clock
from streamflow.warehouse.build import build
from tests.conftest import WAREHOUSE_MONTHS, clone_database, run_cli
from tests.faults.conftest import PausedStep, killed_at
from tests.integration.dbt_reference import table_digests

pytestmark = pytest.mark.faults

MAR, APR = date(2024, 3, 31), date(2024, 4, 30)
PROJECT = "faults_online"


def with_feast(settings, registry: str):
    """Settings of the Feast project ``PROJECT`` with a registry database of its own, applied."""
    with psycopg.connect(EmbeddedPostgres(settings).url("postgres"), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{registry}" with (force)')
        conn.execute(f'create database "{registry}"')
    settings = settings.model_copy(update={"feast_project": PROJECT, "feast_registry_db": registry})
    apply.apply(settings)
    return settings


def online_digests(settings) -> dict[str, str]:
    """md5 of each mart view's online values (not created_ts, the wall-clock time of the write)."""
    tables = [online_table(settings, view) for view in FEATURE_MARTS]
    with connect(settings) as conn:
        return table_digests(conn, [f"(select entity_key, feature_name, value, event_ts from {t})" for t in tables])


def online_as_of(settings) -> dict[bytes, set[datetime]]:
    """entity key -> the event times its values carry, over every mart view (one month: one time)."""
    out: dict[bytes, set[datetime]] = {}
    with connect(settings) as conn:
        for view in FEATURE_MARTS:
            rows = conn.execute(f"select distinct entity_key, event_ts from {online_table(settings, view)}")
            for key, ts in rows:
                out.setdefault(bytes(key), set()).add((view, ts))
    return out


def month_log(settings) -> list[tuple[date, str]]:
    with connect(settings) as conn:
        return conn.execute("select as_of, state from ops.month_log order by 1, 2").fetchall()


def assert_serves_one_month(settings, month: date) -> None:
    """Every user active at ``month`` has every mart view online at ``month``; nobody else is online."""
    stamp = datetime(month.year, month.month, month.day, tzinfo=UTC)
    active = {entity_key_bytes(u): u for u in materialize.active_users(settings, month)}
    online = online_as_of(settings)
    assert set(online) == set(active)
    wrong = {active[k]: sorted(v) for k, v in online.items() if v != {(view, stamp) for view in FEATURE_MARTS}}
    assert not wrong, f"{len(wrong)} users with views of other months or missing views, e.g. {list(wrong.items())[:3]}"


@pytest.fixture(scope="module")
def april_built(warehouse_copy, session_drops):
    """Name of a pristine database with January to April built (nobody connects to it; clone it)."""
    settings = warehouse_copy("faults_online_build")
    ingest(settings, [session_drops[WAREHOUSE_MONTHS]])
    build(settings)
    clone_database(settings, "faults_online_build", "faults_online_template")
    return settings


def test_a_materialization_killed_after_its_first_view_converges_on_a_rerun(april_built):
    clean = with_feast(clone_database(april_built, "faults_online_template", "faults_mat_clean"), "faults_mat_clean_r")
    materialize.materialize(clean, MAR)
    materialize.materialize(clean, APR)

    settings = with_feast(clone_database(april_built, "faults_online_template", "faults_mat_kill"), "faults_mat_kill_r")
    materialize.materialize(settings, MAR)
    killed_at(settings, "materialize.view", "features", "materialize", "--as-of", APR.isoformat())
    with pipeline_lock(settings, "check", wait_seconds=10):  # the killed step's lock went with it
        pass
    assert (APR, "materialized") not in month_log(settings)  # a month half written is not materialized

    run_cli(settings, "features", "materialize", "--as-of", APR.isoformat())
    assert online_digests(settings) == online_digests(clean)
    assert month_log(settings) == month_log(clean)
    assert (
        business_clock(settings, refresh=True)
        == business_clock(clean, refresh=True)
        == datetime(2024, 4, 30, tzinfo=UTC)
    )
    assert_serves_one_month(settings, APR)


def test_the_business_clock_moves_only_when_a_materialization_has_completed(april_built, session_drops):
    copy = clone_database(april_built, "faults_online_template", "faults_mat_clock")
    settings = with_feast(copy, "faults_mat_clock_r")
    materialize.materialize(settings, MAR)
    with PausedStep(settings, "materialize.departed", "features", "materialize", "--as-of", APR.isoformat()) as step:
        step.wait_paused()
        # every view holds April and Feast's record says so, but the users who left in April are still online:
        # the clock the API judges by stays at March until the month is complete
        assert feast_clock(settings, refresh=True) == datetime(2024, 4, 30, tzinfo=UTC)
        assert business_clock(settings, refresh=True) == datetime(2024, 3, 31, tzinfo=UTC)
        assert OnlineReader(settings).refresh().clock == datetime(2024, 3, 31, tzinfo=UTC)
        step.resume()
        assert step.finish() == 0, step.describe()
    assert OnlineReader(settings).refresh().clock == business_clock(settings) == datetime(2024, 4, 30, tzinfo=UTC)
    with connect(settings) as conn:
        assert conn.execute("select as_of from ops.online_served where feast_project = %s", (PROJECT,)).fetchone() == (
            APR,
        )
    # a rebuild of the history forgets every month's states, but not what the store serves until it is rewritten
    ingest(settings, session_drops[: WAREHOUSE_MONTHS + 1], rebuild=True)
    assert {state for _month, state in month_log(settings)} == {"loaded"}
    assert OnlineReader(settings).refresh().clock == datetime(2024, 4, 30, tzinfo=UTC)


@pytest.mark.parametrize("ending", ["resumed", "killed"])
def test_a_materialization_started_while_the_next_month_builds_waits_and_serves_one_complete_month(
    warehouse_copy, session_drops, ending
):
    settings = with_feast(warehouse_copy(f"faults_mat_{ending}"), f"faults_mat_{ending}_r")
    materialize.materialize(settings, MAR)
    ingest(settings, [session_drops[WAREHOUSE_MONTHS]])

    with PausedStep(settings, "build.snapshot", "build") as builder:
        builder.wait_paused()  # April's snapshots are written, its marts are not
        with PausedStep(settings, None, "features", "materialize", "--json") as materializer:
            materializer.wait_for("waiting for the pipeline lock", timeout=120)
            assert materializer.proc.poll() is None
            if ending == "resumed":
                builder.resume()
                assert builder.finish() == 0, builder.describe()
            else:
                builder.kill()
            assert materializer.finish() == 0, materializer.describe()
    served = date.fromisoformat(json.loads(materializer.stdout)["as_of"])

    # the newest month completely built when the lock was free: April after the build, March after the kill
    assert served == (APR if ending == "resumed" else MAR)
    assert business_clock(settings, refresh=True).date() == served
    assert_serves_one_month(settings, served)
    assert (served, "materialized") in month_log(settings)


def test_a_scheduled_materialization_that_waited_while_the_monthly_run_served_the_next_month_is_a_no_op(
    warehouse_copy, session_drops
):
    """The month to serve is chosen under the lock: one chosen before it (March) would be refused as stale
    once the run that held the lock had built and materialized April."""
    settings = with_feast(warehouse_copy("faults_mat_waited"), "faults_mat_waited_r")
    materialize.materialize(settings, MAR)
    ingest(settings, [session_drops[WAREHOUSE_MONTHS]])
    run = pipeline_lock(settings, "run", APR)  # the monthly run of April, in this process
    run.__enter__()
    with PausedStep(settings, None, "features", "materialize", "--json") as materializer:
        try:
            materializer.wait_for("waiting for the pipeline lock", timeout=120)
            build(settings)
            materialize.materialize(settings, APR)
        finally:
            run.__exit__(None, None, None)  # the waiting materialization goes on
        assert materializer.finish() == 0, materializer.describe()
    result = json.loads(materializer.stdout)
    assert result["as_of"] == APR.isoformat() and sorted(result["skipped"]) == sorted(FEATURE_MARTS)
    assert_serves_one_month(settings, APR)
