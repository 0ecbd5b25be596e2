"""Operational history in the warehouse (schema ``ops``): each month's state, pipeline runs and drift
decisions.

The month log is the state machine every consumer asks: a month is ``loaded`` -> ``gated`` -> ``built``
-> ``materialized`` -> ``trained`` -> ``promoted`` -> ``scored``, each state recorded only when its step
has completed (in the step's own transaction where it has one). Reloading a month forgets its states;
``ingest --rebuild`` forgets every month's.

Pipelines write here when they finish; the API exports the latest state as Prometheus metrics, so
alerting needs nothing but the API's ``/metrics``. Timestamps here are wall-clock (when something ran),
unlike business data, which is dated by ``as_of``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime

from streamflow.core.db import connect
from streamflow.core.lock import pipeline_lock
from streamflow.core.resources import Usage
from streamflow.core.settings import Settings

DDL = [
    "create schema if not exists ops",
    """create table if not exists ops.pipeline_runs (
        pipeline text not null,
        run_id text not null,
        as_of date,
        status text not null check (status in ('running', 'success', 'failed')),
        started_at timestamptz not null default now(),
        finished_at timestamptz,
        detail jsonb not null default '{}'::jsonb,
        primary key (pipeline, run_id)
    )""",
    """create table if not exists ops.drift_reports (
        reference_as_of date not null,
        current_as_of date not null,
        drifted_share double precision not null,
        drifted_features jsonb not null,
        threshold double precision not null,
        retrain boolean not null,
        report_path text,
        created_at timestamptz not null default now(),
        primary key (reference_as_of, current_as_of)
    )""",
]


STATES = ("loaded", "gated", "built", "materialized", "trained", "promoted", "scored")
MONTH_LOG = "ops.month_log"
MONTH_LOG_DDL = f"""create table if not exists {MONTH_LOG} (
    as_of date not null,
    state text not null check (state in ({", ".join(f"'{s}'" for s in STATES)})),
    recorded_at timestamptz not null default now(),
    detail jsonb not null default '{{}}'::jsonb,
    primary key (as_of, state)
)"""


def ensure_schema(conn) -> None:
    for stmt in DDL:
        conn.execute(stmt)


def ensure_month_log(conn, build_log: str | None = None) -> None:
    """Create the month log; when it is new, fill it from the logs that came before it (the drops in
    raw.load_log are loaded; the months in the dbt build log ``build_log`` are gated and built)."""
    if conn.execute("select to_regclass(%s)", (MONTH_LOG,)).fetchone()[0] is not None:
        return
    conn.execute("create schema if not exists ops")
    conn.execute(MONTH_LOG_DDL)
    conn.execute(f"comment on table {MONTH_LOG} is 'Each month''s completed steps, in business time (as_of).'")
    if conn.execute("select to_regclass('raw.load_log')").fetchone()[0] is not None:
        conn.execute(f"insert into {MONTH_LOG} (as_of, state) select as_of, 'loaded' from raw.load_log")
        if build_log and conn.execute("select to_regclass(%s)", (build_log,)).fetchone()[0] is not None:
            for state in ("gated", "built"):
                conn.execute(
                    f"insert into {MONTH_LOG} (as_of, state) select b.as_of, %s from {build_log} b "
                    "join raw.load_log l using (as_of) on conflict do nothing",
                    (state,),
                )


def record_month(conn, as_of: date, state: str, detail: dict | None = None) -> None:
    """Note that ``state``'s step completed for month ``as_of`` (replacing an earlier record of it)."""
    if state not in STATES:
        raise ValueError(f"unknown month state {state!r}; known: {', '.join(STATES)}")
    ensure_month_log(conn)
    conn.execute(
        f"""insert into {MONTH_LOG} (as_of, state, detail) values (%s, %s, %s)
            on conflict (as_of, state) do update set recorded_at = now(), detail = excluded.detail""",
        (as_of, state, json.dumps(detail or {}, default=str)),
    )


def forget_months(conn, as_of: date | None = None, *, states: tuple[str, ...] = STATES) -> None:
    """Forget month ``as_of``'s ``states`` (every month's when ``as_of`` is None)."""
    ensure_month_log(conn)
    states = list(states)
    if as_of is None:
        conn.execute(f"delete from {MONTH_LOG} where state = any(%s)", (states,))
    else:
        conn.execute(f"delete from {MONTH_LOG} where as_of = %s and state = any(%s)", (as_of, states))


# The month the online store serves: written by materialization once every view holds the month and the users
# who left are gone (so never mid-way), and read by the API as its business clock. Reloading or rebuilding a
# month does not touch it: until the new history is materialized, the store keeps serving what it served.
SERVED = "ops.online_served"
SERVED_DDL = f"""create table if not exists {SERVED} (
    feast_project text primary key,
    as_of date not null,
    recorded_at timestamptz not null default now()
)"""


def record_served(conn, as_of: date, project: str) -> None:
    """Note that the online store of Feast project ``project`` now serves month ``as_of``."""
    conn.execute("create schema if not exists ops")
    if conn.execute("select to_regclass(%s)", (SERVED,)).fetchone()[0] is None:
        conn.execute(SERVED_DDL)
        conn.execute(f"comment on table {SERVED} is 'The month each online store serves: the API''s business clock.'")
    conn.execute(
        f"""insert into {SERVED} (feast_project, as_of) values (%s, %s)
            on conflict (feast_project) do update set as_of = excluded.as_of, recorded_at = now()""",
        (project, as_of),
    )


def served_month(conn, project: str) -> date | None | bool:
    """The month the online store of Feast project ``project`` serves; None when nothing is served yet; False
    when the record does not exist at all (a warehouse materialized before it was kept: ask Feast's registry)."""
    if conn.execute("select to_regclass(%s)", (SERVED,)).fetchone()[0] is None:
        return False
    row = conn.execute(f"select as_of from {SERVED} where feast_project = %s", (project,)).fetchone()
    return row[0] if row else None


def months_in(conn, state: str) -> list[date]:
    """Every month whose ``state`` step has completed, oldest first."""
    if conn.execute("select to_regclass(%s)", (MONTH_LOG,)).fetchone()[0] is None:
        return []
    return [r[0] for r in conn.execute(f"select as_of from {MONTH_LOG} where state = %s order by as_of", (state,))]


def record_run(
    settings: Settings,
    pipeline: str,
    run_id: str,
    status: str,
    as_of: date | None = None,
    detail: dict | None = None,
) -> None:
    """Insert or update one pipeline run (``running`` at start, ``success``/``failed`` at the end)."""

    with connect(settings) as conn:
        ensure_schema(conn)
        conn.execute(
            """insert into ops.pipeline_runs (pipeline, run_id, as_of, status, detail, finished_at)
               values (%s, %s, %s, %s, %s, case when %s = 'running' then null else now() end)
               on conflict (pipeline, run_id) do update set
                 status = excluded.status, as_of = coalesce(excluded.as_of, ops.pipeline_runs.as_of),
                 detail = ops.pipeline_runs.detail || excluded.detail, finished_at = excluded.finished_at""",
            (pipeline, run_id, as_of, status, json.dumps(detail or {}), status),
        )


# Each step of a pipeline run: how it ended, its wall time and the peak resident memory of its process while it
# ran (streamflow.core.resources). Columns are added with "add column if not exists": older warehouses upgrade.
STEP_LOG = "ops.step_runs"
STEP_COLUMNS = {
    "as_of": "date",
    "status": "text",
    "seconds": "double precision",
    "peak_rss_mb": "double precision",
    "start_rss_mb": "double precision",
}


def ensure_step_log(conn) -> None:
    conn.execute("create schema if not exists ops")
    conn.execute(
        f"""create table if not exists {STEP_LOG} (
            pipeline text not null,
            run_id text not null,
            step text not null,
            recorded_at timestamptz not null default now(),
            primary key (pipeline, run_id, step)
        )"""
    )
    for name, sql_type in STEP_COLUMNS.items():
        conn.execute(f"alter table {STEP_LOG} add column if not exists {name} {sql_type}")


def record_step(
    settings: Settings,
    pipeline: str,
    run_id: str,
    step: str,
    status: str,
    usage: Usage,
    as_of: date | None = None,
) -> None:
    """Note one step of a pipeline run with its duration and peak memory (a retried step: its last try)."""
    with connect(settings) as conn:
        ensure_step_log(conn)
        conn.execute(
            f"""insert into {STEP_LOG} (pipeline, run_id, step, as_of, status, seconds, peak_rss_mb, start_rss_mb)
               values (%s, %s, %s, %s, %s, %s, %s, %s)
               on conflict (pipeline, run_id, step) do update set recorded_at = now(), as_of = excluded.as_of,
                 status = excluded.status, seconds = excluded.seconds, peak_rss_mb = excluded.peak_rss_mb,
                 start_rss_mb = excluded.start_rss_mb""",
            (pipeline, run_id, step, as_of, status, usage.seconds, usage.peak_rss_mb, usage.start_rss_mb),
        )


def step_usage(settings: Settings, pipeline: str, run_id: str) -> dict[str, tuple[str, Usage]]:
    """step -> (status, usage) of every step a run recorded (empty when none did)."""
    with connect(settings) as conn:
        if conn.execute("select to_regclass(%s)", (STEP_LOG,)).fetchone()[0] is None:
            return {}
        ensure_step_log(conn)
        rows = conn.execute(
            f"select step, status, seconds, peak_rss_mb, start_rss_mb from {STEP_LOG} "
            "where pipeline = %s and run_id = %s order by recorded_at",
            (pipeline, run_id),
        ).fetchall()
    return {
        step: (status, Usage(seconds or 0.0, peak or 0.0, start or 0.0)) for step, status, seconds, peak, start in rows
    }


def record_drift(
    settings: Settings,
    reference_as_of: date,
    current_as_of: date,
    drifted_share: float,
    drifted_features: list[str],
    threshold: float,
    retrain: bool,
    report_path: str | None = None,
) -> None:
    """Store (or replace) the decision of one drift comparison."""

    with pipeline_lock(settings, "drift", current_as_of), connect(settings) as conn:
        ensure_schema(conn)
        conn.execute(
            """insert into ops.drift_reports (reference_as_of, current_as_of, drifted_share, drifted_features,
                 threshold, retrain, report_path, created_at)
               values (%s, %s, %s, %s, %s, %s, %s, now())
               on conflict (reference_as_of, current_as_of) do update set
                 drifted_share = excluded.drifted_share, drifted_features = excluded.drifted_features,
                 threshold = excluded.threshold, retrain = excluded.retrain,
                 report_path = excluded.report_path, created_at = excluded.created_at""",
            (
                reference_as_of,
                current_as_of,
                drifted_share,
                json.dumps(drifted_features),
                threshold,
                retrain,
                report_path,
            ),
        )


def claim_retrain(settings: Settings, reference_as_of: date, current_as_of: date) -> bool:
    """True exactly once per pair of months: the monitor triggers at most one retrain for one drift."""
    with connect(settings) as conn:
        ensure_schema(conn)
        conn.execute(
            """create table if not exists ops.retrain_triggers (
                reference_as_of date not null,
                current_as_of date not null,
                triggered_at timestamptz not null default now(),
                primary key (reference_as_of, current_as_of)
            )"""
        )
        row = conn.execute(
            "insert into ops.retrain_triggers (reference_as_of, current_as_of) values (%s, %s) "
            "on conflict do nothing returning 1",
            (reference_as_of, current_as_of),
        ).fetchone()
    return row is not None


@dataclass
class OpsState:
    """The latest state of every pipeline and the latest drift decision."""

    pipelines: dict[str, tuple[str, datetime]]  # pipeline -> (status, finished_at)
    drift_share: float | None
    drift_retrain: bool | None


def latest_state(conn) -> OpsState:
    """Read the latest finished run per pipeline and the newest drift report (empty when none)."""
    exists = conn.execute("select to_regclass('ops.pipeline_runs'), to_regclass('ops.drift_reports')").fetchone()
    pipelines: dict[str, tuple[str, datetime]] = {}
    share = retrain = None
    if exists[0]:
        for name, status, finished in conn.execute(
            """select distinct on (pipeline) pipeline, status, finished_at from ops.pipeline_runs
               where status <> 'running' order by pipeline, finished_at desc"""
        ):
            pipelines[name] = (status, finished)
    if exists[1]:
        row = conn.execute(
            "select drifted_share, retrain from ops.drift_reports order by current_as_of desc, created_at desc limit 1"
        ).fetchone()
        if row:
            share, retrain = row
    return OpsState(pipelines, share, retrain)
