"""Data drift of the model's features between two as_of months (Evidently), and the retrain decision.

The report (HTML for people, JSON for machines) is saved under ``settings.reports_dir`` and logged to
the MLflow experiment ``<mlflow_experiment>_drift``. Retraining is advised when the share of drifted
features reaches ``settings.drift_share_threshold``.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from ml.dataset import FeastSource, FeatureSource
from ml.errors import MLError
from ml.tracking import configure, ensure_experiment
from streamflow.core.progress import SILENT, Progress
from streamflow.core.runlog import record_drift
from streamflow.core.settings import Settings

# importing Evidently 0.7 emits deprecation warnings from its own dependencies (numpy, litestar)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass
class DriftResult:
    reference: date
    current: date
    features: list[str]
    reference_rows: int
    current_rows: int
    drifted_count: int
    drifted_share: float
    threshold: float
    retrain: bool
    columns: list[ColumnDrift]
    html_path: Path | None = None
    json_path: Path | None = None
    run_id: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference.isoformat(),
            "current": self.current.isoformat(),
            "features": self.features,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "drifted_count": self.drifted_count,
            "drifted_share": self.drifted_share,
            "threshold": self.threshold,
            "retrain": self.retrain,
            "decision": "retrain" if self.retrain else "no retrain",
            "columns": [asdict(c) for c in self.columns],
            "html": str(self.html_path) if self.html_path else None,
            "json": str(self.json_path) if self.json_path else None,
            "run_id": self.run_id,
        }


def drift_decision(drifted_share: float, threshold: float) -> bool:
    """Retrain when the drifted share of the model's features reaches the threshold."""
    return round(drifted_share, 12) >= threshold


def summarize(report: dict) -> tuple[int, float, list[ColumnDrift]]:
    """(drifted count, drifted share, per-column results) from an Evidently 0.7 snapshot's ``dict()``."""
    count = share = None
    scores: dict[str, tuple[str, float, float]] = {}
    for metric in report.get("metrics", []):
        kind = metric.get("config", {}).get("type", "")
        if kind.endswith(":DriftedColumnsCount"):
            count, share = int(metric["value"]["count"]), float(metric["value"]["share"])
        elif kind.endswith(":ValueDrift"):
            cfg = metric["config"]
            scores[cfg["column"]] = (cfg.get("method", ""), float(metric["value"]), float(cfg.get("threshold") or 0))
    if count is None:
        raise MLError("the drift report holds no drifted-columns count: is it a DataDriftPreset report?")
    failed = {
        t["metric_config"]["params"]["column"]
        for t in report.get("tests", [])
        if t.get("metric_config", {}).get("params", {}).get("type", "").endswith(":ValueDrift")
        and t.get("status") == "FAIL"
    }
    columns = [ColumnDrift(c, m, s, th, c in failed) for c, (m, s, th) in scores.items()]
    return count, share, columns


def data_definition(frame: pd.DataFrame, features: list[str]):
    """Evidently column roles: numbers are numerical; strings and booleans are categorical."""
    numerical = [
        f
        for f in features
        if pd.api.types.is_numeric_dtype(frame[f].dtype) and not pd.api.types.is_bool_dtype(frame[f].dtype)
    ]
    categorical = [f for f in features if f not in numerical]
    return DataDefinition(numerical_columns=numerical, categorical_columns=categorical)


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, features: list[str], threshold: float):
    """Run Evidently's data-drift preset over ``features``; returns the snapshot."""
    definition = data_definition(reference, features)
    ref = Dataset.from_pandas(reference[features].reset_index(drop=True), data_definition=definition)
    cur = Dataset.from_pandas(current[features].reset_index(drop=True), data_definition=definition)
    report = Report([DataDriftPreset(columns=features, drift_share=threshold)], include_tests=True)
    return report.run(current_data=cur, reference_data=ref)


def drift(
    settings: Settings,
    reference: date,
    current: date,
    *,
    source: FeatureSource | None = None,
    log_to_mlflow: bool = True,
    progress: Progress = SILENT,
) -> DriftResult:
    """Compare the model's features of the users active at ``reference`` and at ``current``."""
    if reference == current:
        raise MLError("reference and current are the same month: pick two different as_of dates")
    source = source or FeastSource(settings)
    progress.start("reading features")
    started = time.perf_counter()
    features = source.model_features()
    frames = _read_frames(source, features, {"reference": reference, "current": current})
    data_seconds = time.perf_counter() - started

    progress.start("computing the drift report")
    started = time.perf_counter()
    threshold = settings.drift_share_threshold
    snapshot = drift_report(frames["reference"], frames["current"], features, threshold)
    report = snapshot.dict()
    count, share, columns = summarize(report)
    result = DriftResult(
        reference=reference,
        current=current,
        features=features,
        reference_rows=len(frames["reference"]),
        current_rows=len(frames["current"]),
        drifted_count=count,
        drifted_share=share,
        threshold=threshold,
        retrain=drift_decision(share, threshold),
        columns=columns,
    )
    _save(settings, result, snapshot, report)
    result.timings = {"data_seconds": data_seconds, "report_seconds": time.perf_counter() - started}

    if log_to_mlflow:
        progress.start("logging to MLflow")
        result.run_id = _log(settings, result)
    # the decision also goes to the warehouse, where the API exports it for alerting
    record_drift(
        settings,
        reference,
        current,
        share,
        [c.column for c in columns if c.drifted],
        threshold,
        result.retrain,
        str(result.html_path),
    )
    return result


def _read_frames(source: FeatureSource, features: list[str], months: dict[str, date]) -> dict[str, pd.DataFrame]:
    """The feature frame of each labelled month; a clear error when one is empty or lacks a feature."""
    frames = {}
    for label, as_of in months.items():
        frame = source.feature_frame(as_of)
        if frame.empty:
            raise MLError(f"no active users at {as_of} (the {label} month): has it been ingested and built?")
        missing = [f for f in features if f not in frame.columns]
        if missing:
            raise MLError(f"the {label} features lack columns {missing}")
        frames[label] = frame
    return frames


def _save(settings: Settings, result: DriftResult, snapshot, report: dict) -> None:
    """The report as HTML (Evidently's) and JSON (the summary with Evidently's dict) under ``reports_dir``."""
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    stem = f"drift_{result.reference.isoformat()}_{result.current.isoformat()}"
    result.html_path = settings.reports_dir / f"{stem}.html"
    result.json_path = settings.reports_dir / f"{stem}.json"
    snapshot.save_html(str(result.html_path))
    summary = result.as_dict()
    summary["evidently"] = report
    result.json_path.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _log(settings: Settings, result: DriftResult) -> str:
    client = configure(settings)
    experiment_id = ensure_experiment(client, settings, f"{settings.mlflow_experiment}_drift")
    name = f"drift {result.reference.isoformat()} -> {result.current.isoformat()}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.set_tags(
            {
                "streamflow.run_type": "drift",
                "streamflow.decision": "retrain" if result.retrain else "no retrain",
                "streamflow.reference": result.reference.isoformat(),
                "streamflow.current": result.current.isoformat(),
            }
        )
        mlflow.log_params(
            {
                "reference": result.reference.isoformat(),
                "current": result.current.isoformat(),
                "threshold": result.threshold,
                "n_features": len(result.features),
                "feature_service": settings.feature_service,
            }
        )
        metrics = {
            "drifted_share": result.drifted_share,
            "drifted_count": float(result.drifted_count),
            "reference_rows": float(result.reference_rows),
            "current_rows": float(result.current_rows),
            "retrain": float(result.retrain),
        }
        metrics.update({f"drift_score.{c.column}": c.score for c in result.columns})
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(result.html_path), "reports")
        mlflow.log_artifact(str(result.json_path), "reports")
    return run.info.run_id
