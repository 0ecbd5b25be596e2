"""The steps of the monthly cycle as plain functions, for the Airflow DAGs (and anyone else).

Each step takes and returns JSON-friendly values (they travel as XCom). A step with nothing to do
for a month (no labels yet, no champion yet, no earlier month) raises :class:`NothingToDo`; the DAG
turns that into a skipped task. Problems in the data raise :class:`StepRefused`: retrying cannot
help, so the DAG fails the task at once.

The layers below (warehouse, features, ml) are imported inside each step: Airflow imports this
module whenever it parses the DAG files, and parsing must not pay for dbt, Feast or MLflow.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

from streamflow.core import months, runlog
from streamflow.core.db import connect
from streamflow.core.errors import StreamflowError
from streamflow.core.months import as_month
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


# ---------------------------------------------------------------------------------------
# which month
# ---------------------------------------------------------------------------------------
LAYOUTS = ("events", "aggregated")  # streamflow.drops.aggregated.LAYOUTS, without importing the drops at parse time


def resolve_month(drop: str | None = None, as_of: str | None = None, layout: str | None = None) -> dict:
    """The month a run is about: the as_of of the drop's manifest, or the as_of given (the month end of a
    folder of the aggregated layout, which has no manifest)."""
    layout = layout or "events"
    if layout not in LAYOUTS:
        raise StepRefused(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if layout == "aggregated":
        return _resolve_aggregated(drop, as_of)
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
        return {"as_of": as_month(as_of).isoformat(), "drop": None}
    raise StepRefused("give the run a drop folder (conf drop) or a month (conf as_of)")


def _resolve_aggregated(drop: str | None, as_of: str | None) -> dict:
    if not drop or not as_of:
        raise StepRefused(
            'a month of the aggregated layout needs its folder and its month end: conf {"drop": DIR, '
            '"as_of": "2024-01-31", "layout": "aggregated"}'
        )
    if not Path(drop).is_dir():
        raise StepRefused(f"month folder {drop} does not exist")
    try:
        month = as_month(as_of)
    except ValueError as exc:
        raise StepRefused(f"as_of: {exc}") from None
    return {"as_of": month.isoformat(), "drop": str(Path(drop).resolve()), "layout": "aggregated"}


def loaded_months(settings: Settings | None = None) -> list[date]:
    """Every loaded month, oldest first."""
    with connect(_settings(settings)) as conn:
        return months.loaded_months(conn)


def built_months(settings: Settings | None = None) -> list[date]:
    """Every completely built month, oldest first (the build log)."""
    settings = _settings(settings)
    with connect(settings) as conn:
        return months.built_months(conn, settings)


def previous_month(as_of: str | date, settings: Settings | None = None) -> date | None:
    """The newest loaded month before ``as_of``."""
    return months.previous(loaded_months(settings), as_month(as_of))


# ---------------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------------
def ingest_drop(
    drop: str, settings: Settings | None = None, layout: str | None = None, as_of: str | None = None
) -> dict:
    """Check and load one drop into raw.* (idempotent): an event drop, or with ``layout="aggregated"`` one
    month folder of the aggregated layout as month ``as_of``."""
    from streamflow.drops.ingest import IngestError, ingest, ingest_aggregated

    try:
        if (layout or "events") == "aggregated":
            result = ingest_aggregated(_settings(settings), Path(drop), as_month(as_of or ""))
        else:
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

    build.record_built(_settings(settings), as_month(as_of))
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
    if not as_of and not built_months(settings):
        raise NothingToDo("no month is built yet: nothing to materialize")
    # without as_of, the newest built month is chosen under the pipeline lock, after any build that holds it
    result = materialize.materialize(settings, as_month(as_of) if as_of else None)
    return _jsonable(result.as_dict())


def labelled_periods(settings: Settings | None = None) -> list[date]:
    """Label periods whose labels are built, oldest first."""
    settings = _settings(settings)
    with connect(settings) as conn:
        return months.labelled_periods(conn, settings)


def train(as_of: str, settings: Settings | None = None) -> dict:
    """Train on every labelled period before ``as_of`` and register the best model as challenger."""
    from ml.train import train as train_model

    settings = _settings(settings)
    month = as_month(as_of)
    if not [p for p in labelled_periods(settings) if p < month]:
        raise NothingToDo(f"no labelled period before {as_of} yet: labels arrive with the next month's drop")
    result = train_model(settings, month)
    return _jsonable(result.as_dict())


def promote(trained: dict | None = None, as_of: str | None = None, settings: Settings | None = None) -> dict:
    """Move the champion alias to the version this run trained (``trained``; else the challenger) when it
    passes the promotion gate, and note the month as promoted."""
    from ml.promote import promote as promote_model

    settings = _settings(settings)
    version = (trained or {}).get("model_version")
    result = promote_model(settings, version=str(version) if version else None)
    if as_of:
        with connect(settings) as conn:
            runlog.record_month(conn, as_month(as_of), "promoted", result.as_dict())
    return _jsonable(result.as_dict())


def score(as_of: str, settings: Settings | None = None) -> dict:
    """Score every active user at ``as_of`` with the champion into ml.churn_scores."""
    from ml.score import score as score_month
    from ml.tracking import configure, version_by_alias
    from streamflow.core.names import CHAMPION

    settings = _settings(settings)
    if version_by_alias(configure(settings), settings.model_name, CHAMPION) is None:
        raise NothingToDo("there is no champion model yet")
    result = score_month(settings, as_month(as_of))
    return _jsonable(result.as_dict())


def drift(as_of: str, reference: str | None = None, settings: Settings | None = None) -> dict:
    """Drift of the model's features between ``reference`` (default: the previous month) and ``as_of``."""
    from ml.drift import drift as drift_report

    settings = _settings(settings)
    ref = as_month(reference) if reference else previous_month(as_of, settings)
    if ref is None:
        raise NothingToDo(f"no month before {as_of} to compare with")
    result = drift_report(settings, ref, as_month(as_of))
    return _jsonable(result.as_dict())


def monthly_drift(as_of: str, mode: str = "monthly", settings: Settings | None = None) -> dict:
    """The monthly run's drift check against the previous month (not in retrain mode)."""
    if mode == "retrain":
        raise NothingToDo("retrain mode: the drift check belongs to the monthly run")
    return drift(as_of, settings=settings)


def drift_of_latest_months(settings: Settings | None = None) -> dict:
    """The monitor's check: drift between the two newest built months, with its decision. A month
    loaded but stopped at the quality gate has no features, so it is not compared."""
    settings = _settings(settings)
    built = built_months(settings)
    if len(built) < 2:
        raise NothingToDo("fewer than two months are built: nothing to compare")
    result = drift(built[-1].isoformat(), built[-2].isoformat(), settings=settings)
    advised = bool(result.get("retrain"))
    # while drift persists, the daily check advises a retrain every day: trigger one per pair of months
    first = advised and runlog.claim_retrain(settings, built[-2], built[-1])
    return {
        **result,
        "retrain": first,
        "retrain_advised": advised,
        "reference": built[-2].isoformat(),
        "current": built[-1].isoformat(),
    }


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

    write(_settings(settings), pipeline, run_id, status, as_month(as_of) if as_of else None, detail)
