"""Trust in operation: one writer at a time, the month log every consumer asks, a rebuilt history that
reaches the online store, and an online store that never empties while a month is rewritten."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime

import psycopg
import pytest

from streamflow.core import lock, months, runlog
from streamflow.core.db import connect
from streamflow.core.lock import LockTimeout, pipeline_lock
from streamflow.core.names import FEATURE_MARTS
from streamflow.core.stack import EmbeddedPostgres
from streamflow.drops.ingest import ingest
from streamflow.features import apply, materialize
from streamflow.features.online import online_read
from streamflow.features.online_store import online_entities
from streamflow.features.store import business_clock
from streamflow.warehouse.build import build
from tests.conftest import WAREHOUSE_MONTHS, run_cli, settings_env
from tests.integration.dbt_reference import copy_drop

pytestmark = pytest.mark.integration

JAN, FEB, MAR = date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31)


def _as_of(drop) -> date:
    return date.fromisoformat(json.loads((drop / "manifest.json").read_text())["as_of"])


def _feast_project(settings, name: str):
    """Settings of a Feast project of its own, with a registry database of its own."""
    registry = f"{name}_registry"
    with psycopg.connect(EmbeddedPostgres(settings).url("postgres"), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{registry}" with (force)')
        conn.execute(f'create database "{registry}"')
    return settings.model_copy(update={"feast_project": name, "feast_registry_db": registry})


# ---------------------------------------------------------------------------------------
# one pipeline lock
# ---------------------------------------------------------------------------------------
def test_a_second_writer_waits_then_fails_naming_the_step_that_holds_the_lock(warehouse_copy, session_drops):
    settings = warehouse_copy("ops_lock").model_copy(update={"lock_wait_seconds": 2.0})
    with pipeline_lock(settings, "build", MAR):
        started = time.monotonic()
        proc = run_cli(settings, "ingest", str(session_drops[WAREHOUSE_MONTHS]), check=False)
        waited = time.monotonic() - started
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    said = " ".join(proc.stderr.split())
    assert "ingest" in said and "held by" in said and f"held by build {MAR} (pid {os.getpid()}@" in said
    assert "waiting for the pipeline lock" in said and waited >= 2
    with connect(settings) as conn:  # nothing of the refused drop was loaded
        assert _as_of(session_drops[WAREHOUSE_MONTHS]) not in months.loaded_months(conn)


def test_the_lock_is_reentrant_in_a_process_and_inherited_by_the_holders_children(warehouse_copy):
    settings = warehouse_copy("ops_lock")
    child = [
        sys.executable,
        "-c",
        "from streamflow.core.lock import pipeline_lock\n"
        "from streamflow.core.settings import get_settings\n"
        "with pipeline_lock(get_settings(), 'score', wait_seconds=0): print('inside')",
    ]
    with pipeline_lock(settings, "run"), pipeline_lock(settings, "build", MAR, wait_seconds=0):
        env = {**settings_env(settings), lock.ENV_VAR: os.environ[lock.ENV_VAR]}
        inherited = subprocess.run(child, env=env, capture_output=True, text=True, timeout=120)
        stranger = subprocess.run(child, env=settings_env(settings), capture_output=True, text=True, timeout=120)
    assert inherited.stdout.strip() == "inside", inherited.stderr
    assert stranger.returncode != 0 and "held by" in stranger.stderr and "run" in stranger.stderr
    with pipeline_lock(settings, "ingest", wait_seconds=0):  # released by the outer block
        pass


def test_a_killed_writer_frees_the_lock_at_once(warehouse_copy):
    settings = warehouse_copy("ops_lock")
    code = (
        "import sys, time\nfrom streamflow.core.lock import pipeline_lock\n"
        "from streamflow.core.settings import get_settings\n"
        "with pipeline_lock(get_settings(), 'materialize'):\n    print('held', flush=True)\n    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=settings_env(settings), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with (
            pytest.raises(LockTimeout, match="held by materialize"),
            pipeline_lock(settings, "ingest", wait_seconds=0.5),
        ):
            pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        with pipeline_lock(settings, "ingest", wait_seconds=30):
            pass
    finally:
        proc.kill()


# ---------------------------------------------------------------------------------------
# the month log
# ---------------------------------------------------------------------------------------
def test_the_month_log_records_each_step_when_it_completes_and_a_reload_forgets_them(
    warehouse_copy, session_drops, tmp_path
):
    settings = warehouse_copy("ops_month_log")
    built = [_as_of(d) for d in session_drops[:WAREHOUSE_MONTHS]]
    nxt = session_drops[WAREHOUSE_MONTHS]
    with connect(settings) as conn:
        assert months.months_in(conn, settings, "built") == built
        assert months.months_in(conn, settings, "gated") == built
    ingest(settings, [nxt])
    with connect(settings) as conn:
        assert months.months_in(conn, settings, "loaded") == [*built, _as_of(nxt)]
        assert months.built_months(conn, settings) == built  # loaded, not built: invisible to consumers
    build(settings)
    with connect(settings) as conn:
        assert months.built_months(conn, settings) == [*built, _as_of(nxt)]
    # a corrected version of the newest month: its states are forgotten until it is built again
    fee = lambda frame: frame.assign(monthly_fee=frame["monthly_fee"].where(frame.index != 0, "99.99"))  # noqa: E731
    corrected = copy_drop(nxt, tmp_path / nxt.name, {"subscriptions": fee})
    ingest(settings, [corrected])
    with connect(settings) as conn:
        assert months.built_months(conn, settings) == built
        assert months.months_in(conn, settings, "loaded")[-1] == _as_of(nxt)


# ---------------------------------------------------------------------------------------
# a rebuilt history reaches the online store; a rewrite never empties it
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def online_history(warehouse_copy):
    """A warehouse of its own with January to March online."""
    settings = _feast_project(warehouse_copy("ops_online"), "ops_online")
    apply.apply(settings)
    for month in (JAN, FEB, MAR):
        materialize.materialize(settings, month)
    return settings


def test_rewriting_a_month_never_leaves_an_active_user_without_features(online_history):
    settings = online_history
    active = materialize.active_users(settings, MAR)[:200]
    missing: list[str] = []
    done = threading.Event()

    def rewrite():
        try:
            materialize.materialize(settings, MAR, force=True)
        finally:
            done.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    reads = 0
    while not done.is_set() or reads == 0:
        missing += [r.user_id for r in online_read(settings, active) if r.verdict.missing]
        reads += 1
    writer.join()
    assert reads > 1 and missing == []


def test_an_interrupted_rebuild_never_winds_the_online_store_back(online_history):
    settings = online_history
    with connect(settings) as conn:  # a full refresh killed after January: February and March still loaded
        runlog.forget_months(conn, states=("built",))
        runlog.record_month(conn, JAN, "built")
    try:
        with pytest.raises(materialize.FeaturesError, match="loaded but not built again yet"):
            materialize.materialize(settings, JAN)
        assert business_clock(settings, refresh=True) == datetime(2024, 3, 31, tzinfo=UTC)
    finally:
        with connect(settings) as conn:
            for month in (FEB, MAR):
                runlog.record_month(conn, month, "built")


def test_a_shorter_corrected_history_reaches_the_online_store(online_history, session_drops):
    settings = online_history
    assert business_clock(settings, refresh=True) == datetime(2024, 3, 31, tzinfo=UTC)
    before = materialize.materialize(settings, MAR)  # nothing to do: already online
    assert sorted(before.skipped) == sorted(FEATURE_MARTS)

    ingest(settings, session_drops[:2], rebuild=True)  # January and February only
    build(settings)
    with pytest.raises(materialize.FeaturesError, match="not built"):
        materialize.materialize(settings, MAR)
    result = materialize.materialize(settings, FEB)

    assert result.business_clock == datetime(2024, 2, 29, tzinfo=UTC)
    active = set(materialize.active_users(settings, FEB))
    for mart in FEATURE_MARTS:
        assert online_entities(settings, mart) == active, mart
    rows = online_read(settings, sorted(active)[:50])
    assert {r.as_of["subscriptions_profile"] for r in rows} == {datetime(2024, 2, 29, tzinfo=UTC)}
    again = materialize.materialize(settings, FEB)  # the rewrite is recorded: a rerun changes nothing
    assert sorted(again.skipped) == sorted(FEATURE_MARTS)
