"""Operational history in the warehouse (schema ``ops``): pipeline runs and drift decisions.

Pipelines write here when they finish; the API exports the latest state as Prometheus metrics, so
alerting needs nothing but the API's ``/metrics``. Timestamps here are wall-clock (when something ran),
unlike business data, which is dated by ``as_of``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime

from streamflow.core.db import connect
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


def ensure_schema(conn) -> None:
    for stmt in DDL:
        conn.execute(stmt)


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

    with connect(settings) as conn:
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
