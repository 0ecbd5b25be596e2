"""The steps of the monthly cycle as plain functions, for the Airflow DAGs (and anyone else).

Each step takes and returns JSON-friendly values (they travel as XCom). A step with nothing to do
for a month (no labels yet, no champion yet, no earlier month) raises :class:`NothingToDo`; the DAG
turns that into a skipped task. Problems in the data raise :class:`StepRefused`: retrying cannot
help, so the DAG fails the task at once.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

from streamflow.core.errors import StreamflowError
from streamflow.core.settings import Settings, get_settings


class NothingToDo(StreamflowError):
    """The step does not apply to this month; the reason is the message."""


class StepRefused(StreamflowError):
    """The input is wrong (a bad drop, a failed quality gate): retrying will not help."""


def _settings(settings: Settings | None) -> Settings:
    return settings or get_settings()


def _jsonable(value: dict) -> dict:
    """A result as plain JSON types (dates become ISO strings), fit for XCom."""
    return json.loads(json.dumps(value, default=str))


def _date(value: str | date) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


# ---------------------------------------------------------------------------------------
# which month
# ---------------------------------------------------------------------------------------
def resolve_month(drop: str | None = None, as_of: str | None = None) -> dict:
    """The month a run is about: the as_of of the drop's manifest, or the as_of given."""
    if drop:
        manifest = Path(drop) / "manifest.json"
        try:
            found = json.loads(manifest.read_text())["as_of"]
        except (OSError, ValueError, KeyError) as exc:
            raise StepRefused(f"cannot read the as_of of drop {drop}: {exc}") from None
        if as_of and as_of != found:
            raise StepRefused(f"drop {drop} is for {found}, not for the as_of given ({as_of})")
        return {"as_of": found, "drop": str(Path(drop).resolve())}
    if as_of:
        return {"as_of": _date(as_of).isoformat(), "drop": None}
    raise StepRefused("give the run a drop folder (conf drop) or a month (conf as_of)")


def loaded_months(settings: Settings | None = None) -> list[date]:
    """Every month in raw.load_log, oldest first."""
    from streamflow.core.db import connect

    with connect(_settings(settings)) as conn:
        if conn.execute("select to_regclass('raw.load_log')").fetchone()[0] is None:
            return []
        return [r[0] for r in conn.execute("select as_of from raw.load_log order by as_of")]


def previous_month(as_of: str | date, settings: Settings | None = None) -> date | None:
    """The newest loaded month before ``as_of``."""
    earlier = [m for m in loaded_months(settings) if m < _date(as_of)]
    return earlier[-1] if earlier else None


# ---------------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------------
def ingest_drop(drop: str, settings: Settings | None = None) -> dict:
    """Check and load one drop into raw.* (idempotent)."""
    from streamflow.drops.ingest import IngestError, ingest

    try:
        (result,) = ingest(_settings(settings), [Path(drop)])
    except IngestError as exc:
        raise StepRefused(exc.render()) from None
    return {"as_of": result.as_of.isoformat(), "status": result.status, "rows": result.rows}


def prepare_warehouse(as_of: str, settings: Settings | None = None) -> dict:
    """Before dbt runs month ``as_of`` node by node: refresh the manifest, and bring snapshots and
    marts up to the month before it (a rebuild from the raw history when older months changed),
    so the per-node run only has ``as_of`` left to do."""
    from streamflow.warehouse import gate, runner
    from streamflow.warehouse.build import build

    settings = _settings(settings)
    runner.parse(settings)
    before = previous_month(as_of, settings)
    if before is None:
        return {"caught_up": [], "reason": "first month"}
    try:
        result = build(settings, before)
    except gate.GateFailed as exc:
        raise StepRefused(exc.report.render()) from None
    return {"caught_up": [m.isoformat() for m in result.months], "reason": result.reason}


def record_warehouse_month(as_of: str, settings: Settings | None = None) -> dict:
    """After dbt built month ``as_of`` node by node: note it in the build log like `streamflow build` does."""
    from streamflow.warehouse import build

    build.record_built(_settings(settings), _date(as_of))
    return {"built": as_of}


def apply_features(settings: Settings | None = None) -> dict:
    """Register the Feast repo (idempotent)."""
    from streamflow.features.apply import apply

    apply(_settings(settings))
    return {"applied": True}


def materialize(as_of: str | None = None, settings: Settings | None = None) -> dict:
    """Load month ``as_of`` (default: the newest built) into the online store (idempotent)."""
    from streamflow.features import materialize

    settings = _settings(settings)
    if as_of:
        month = _date(as_of)
    else:
        months = materialize.built_months(settings)
        if not months:
            raise NothingToDo("no month is built yet: nothing to materialize")
        month = months[-1]
    result = materialize.materialize(settings, month)
    return _jsonable(result.as_dict())


def labelled_periods(settings: Settings | None = None) -> list[date]:
    """Label periods present in the warehouse (marts.labels)."""
    from streamflow.core.db import connect

    with connect(_settings(settings)) as conn:
        if conn.execute("select to_regclass('marts.labels')").fetchone()[0] is None:
            return []
        return [
            r[0]
            for r in conn.execute(
                "select distinct (period_start at time zone 'UTC')::date from marts.labels order by 1"
            )
        ]


def train(as_of: str, settings: Settings | None = None) -> dict:
    """Train on every labelled period before ``as_of`` and register the best model as challenger."""
    from ml.train import train as train_model

    settings = _settings(settings)
    month = _date(as_of)
    if not [p for p in labelled_periods(settings) if p < month]:
        raise NothingToDo(f"no labelled period before {as_of} yet: labels arrive with the next month's drop")
    result = train_model(settings, month)
    return _jsonable(result.as_dict())


def promote(settings: Settings | None = None) -> dict:
    """Move the champion alias to the challenger when it passes the promotion gate."""
    from ml.promote import promote as promote_model

    result = promote_model(_settings(settings))
    return _jsonable(result.as_dict())


def score(as_of: str, settings: Settings | None = None) -> dict:
    """Score every active user at ``as_of`` with the champion into ml.churn_scores."""
    from ml.score import score as score_month
    from ml.tracking import configure, version_by_alias
    from streamflow.core.names import CHAMPION

    settings = _settings(settings)
    if version_by_alias(configure(settings), settings.model_name, CHAMPION) is None:
        raise NothingToDo("there is no champion model yet")
    result = score_month(settings, _date(as_of))
    return _jsonable(result.as_dict())


def drift(as_of: str, reference: str | None = None, settings: Settings | None = None) -> dict:
    """Drift of the model's features between ``reference`` (default: the previous month) and ``as_of``."""
    from ml.drift import drift as drift_report

    settings = _settings(settings)
    ref = _date(reference) if reference else previous_month(as_of, settings)
    if ref is None:
        raise NothingToDo(f"no month before {as_of} to compare with")
    result = drift_report(settings, ref, _date(as_of))
    return _jsonable(result.as_dict())


def monthly_drift(as_of: str, mode: str = "monthly", settings: Settings | None = None) -> dict:
    """The monthly run's drift check against the previous month (not in retrain mode)."""
    if mode == "retrain":
        raise NothingToDo("retrain mode: the drift check belongs to the monthly run")
    return drift(as_of, settings=settings)


def drift_of_latest_months(settings: Settings | None = None) -> dict:
    """The monitor's check: drift between the two newest built months, with its decision. A month
    loaded but stopped at the quality gate has no features, so it is not compared."""
    from streamflow.features import materialize

    months = materialize.built_months(_settings(settings))
    if len(months) < 2:
        raise NothingToDo("fewer than two months are built: nothing to compare")
    result = drift(months[-1].isoformat(), months[-2].isoformat(), settings=settings)
    return {**result, "reference": months[-2].isoformat(), "current": months[-1].isoformat()}


def materialize_newest(settings: Settings | None = None) -> dict:
    """The short-schedule materialization: the newest built month, incrementally (no-op when online)."""
    return materialize(None, settings)


def record_run(
    pipeline: str,
    run_id: str,
    status: str,
    as_of: str | None = None,
    detail: dict | None = None,
    settings: Settings | None = None,
) -> None:
    """Write the outcome of a pipeline run to ops.pipeline_runs (read by the API's /metrics)."""
    from streamflow.core.runlog import record_run as write

    write(_settings(settings), pipeline, run_id, status, _date(as_of) if as_of else None, detail)
