"""kill -9 of a warehouse step at a named point, then the same step again: the warehouse equals a clean run's.

Each step runs as the real `streamflow` command, stopped at a fault point (streamflow/core/faults.py) and
killed there. The reference is the session's built warehouse (January to March) with April ingested and
built without interruption. Compared: every raw table, snapshot and mart by checksum, the relations each
schema holds (nothing half-made left behind), and the month log's states."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date

import pytest

from streamflow.core.db import connect
from streamflow.core.lock import pipeline_lock
from streamflow.drops import contract
from streamflow.drops.ingest import ingest
from streamflow.warehouse.build import build
from tests.conftest import WAREHOUSE_MONTHS, run_cli
from tests.faults.conftest import killed_at
from tests.integration.dbt_reference import table_digests, warehouse_digests

pytestmark = pytest.mark.faults

RAW_TABLES = [f"raw.{spec.table}" for spec in contract.FILES.values()]
LOAD_LOG = "(select as_of, drop_name, drop_path, manifest_sha256, files from raw.load_log)"  # not loaded_at


@dataclass(frozen=True)
class State:
    raw: dict[str, str]
    warehouse: dict[str, str]
    relations: list[tuple[str, str]]
    month_log: list[tuple[date, str]]


def state(settings) -> State:
    with connect(settings) as conn:
        raw = table_digests(conn, [*RAW_TABLES, LOAD_LOG])
        present = conn.execute("select to_regclass('marts.subscriptions_profile')").fetchone()[0] is not None
        warehouse = warehouse_digests(conn) if present else {}
        relations = conn.execute(
            """select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
               where n.nspname in ('raw', 'snapshots', 'marts') and c.relkind in ('r', 'p', 'v', 'm')
               order by 1, 2"""
        ).fetchall()
        month_log = conn.execute("select as_of, state from ops.month_log order by 1, 2").fetchall()
    return State(raw, warehouse, relations, month_log)


def as_of(drop) -> date:
    return date.fromisoformat(json.loads((drop / "manifest.json").read_text())["as_of"])


@dataclass(frozen=True)
class Clean:
    loaded: State  # after April's ingest
    built: State  # after April's build


@pytest.fixture(scope="module")
def clean(warehouse_copy, session_drops) -> Clean:
    """The reference: April ingested, then built, with nothing killed."""
    settings = warehouse_copy("faults_clean")
    ingest(settings, [session_drops[WAREHOUSE_MONTHS]])
    loaded = state(settings)
    build(settings)
    return Clean(loaded, state(settings))


def assert_lock_free(settings) -> None:
    """The killed step's lock went with its connection."""
    with pipeline_lock(settings, "check", wait_seconds=10):
        pass


def test_ingest_killed_during_copy_loads_nothing_and_a_rerun_equals_a_clean_ingest(
    clean, warehouse_copy, session_drops
):
    settings = warehouse_copy("faults_ingest")
    april = session_drops[WAREHOUSE_MONTHS]
    before = state(settings)
    killed_at(settings, "ingest.copy", "ingest", str(april))
    assert_lock_free(settings)
    assert state(settings) == before  # nothing of the killed load, no half-made table

    run_cli(settings, "ingest", str(april))
    after = state(settings)
    assert after.raw == clean.loaded.raw
    assert after.relations == clean.loaded.relations
    assert after.month_log == clean.loaded.month_log and (as_of(april), "loaded") in after.month_log


def test_build_killed_between_snapshots_and_marts_is_invisible_and_a_rerun_equals_a_clean_build(
    clean, warehouse_copy, session_drops
):
    settings = warehouse_copy("faults_build")
    april = session_drops[WAREHOUSE_MONTHS]
    ingest(settings, [april])
    killed_at(settings, "build.snapshot", "build")
    assert_lock_free(settings)
    assert (as_of(april), "built") not in state(settings).month_log  # a half-built month is not built

    run_cli(settings, "build")
    after = state(settings)
    assert after.warehouse == clean.built.warehouse
    assert after.relations == clean.built.relations
    assert after.month_log == clean.built.month_log


def test_a_full_rebuild_killed_after_its_first_month_changes_nothing_live_and_converges_on_a_rerun(
    clean, warehouse_copy, session_drops
):
    settings = warehouse_copy("faults_rebuild")
    drops = session_drops[: WAREHOUSE_MONTHS + 1]
    ingest(settings, drops, rebuild=True)  # the same history reloaded: the build starts over from raw
    before = state(settings)
    killed_at(settings, "build.month", "build")
    assert_lock_free(settings)
    after_kill = state(settings)
    # the rebuild ran beside the live schemas: the snapshots and marts and their relations are exactly what they
    # were (January to March of the old load); every month passed the gate, none counts as built
    assert (after_kill.raw, after_kill.warehouse, after_kill.relations) == (
        before.raw,
        before.warehouse,
        before.relations,
    )
    assert {s for _m, s in after_kill.month_log} == {"loaded", "gated"}
    assert "marts__rebuild" in schemas(settings)  # the killed rebuild's half-made schemas, out of the way

    run_cli(settings, "build")
    after = state(settings)
    assert after.warehouse == clean.built.warehouse
    assert after.relations == clean.built.relations
    assert after.month_log == clean.built.month_log
    assert not [s for s in schemas(settings) if s.endswith(("__rebuild", "__replaced"))]


def schemas(settings) -> list[str]:
    with connect(settings) as conn:
        return [r[0] for r in conn.execute("select nspname from pg_namespace order by 1")]
