"""Training: model families in scikit-learn pipelines, the best on validation, tracked and registered in MLflow.

Every family is one pipeline that takes the raw feature frame (one-hot encoding and scaling inside),
handles class imbalance with class weights and is fitted with fixed seeds: the same training frame
always gives the same model and the same metrics.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ml.dataset import (
    LABEL,
    FeastSource,
    FeatureSource,
    ValidationPlan,
    canonical_order,
    frame_digest,
    periods_up_to,
    plan_validation,
    split_frame,
)
from ml.errors import MLError
from ml.metrics import best_threshold, classification_metrics
from ml.threads import limited_threads
from ml.tracking import (
    LINEAGE_ARTIFACT,
    MODEL_NAME_IN_RUN,
    SKOPS_TRUSTED_TYPES,
    configure,
    ensure_experiment,
    git_commit,
)
from streamflow.core import faults, runlog
from streamflow.core.db import connect
from streamflow.core.lock import pipeline_lock
from streamflow.core.names import CHALLENGER
from streamflow.core.progress import SILENT, Progress
from streamflow.core.settings import Settings


# ---------------------------------------------------------------------------------------
# model families
# ---------------------------------------------------------------------------------------
def _logistic_regression(seed: int):
    return LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=seed)


def _hist_gradient_boosting(seed: int):
    return HistGradientBoostingClassifier(
        learning_rate=0.05,
        max_iter=300,
        max_leaf_nodes=15,
        min_samples_leaf=40,
        l2_regularization=1.0,
        class_weight="balanced",
        early_stopping=False,  # a fixed number of trees: no internal random validation split
        random_state=seed,
    )


FAMILIES: dict[str, Callable[[int], Any]] = {
    "logistic_regression": _logistic_regression,
    "hist_gradient_boosting": _hist_gradient_boosting,
}


def split_columns(frame: pd.DataFrame, features: list[str]) -> tuple[list[str], list[str]]:
    """(numeric, categorical) feature names: numbers and booleans are numeric, everything else categorical."""
    numeric, categorical = [], []
    for name in features:
        dtype = frame[name].dtype
        if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
            numeric.append(name)
        else:
            categorical.append(name)
    return numeric, categorical


def build_pipeline(family: str, numeric: list[str], categorical: list[str], seed: int):
    """An unfitted pipeline: impute + scale numerics, impute + one-hot categoricals, then the classifier."""
    if family not in FAMILIES:
        raise MLError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    pre = ColumnTransformer(
        [
            ("numeric", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]), numeric),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
                        ("one_hot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                categorical,
            ),
        ],
        remainder="drop",
        verbose_feature_names_out=False,
    )
    return Pipeline([("preprocess", pre), ("classifier", FAMILIES[family](seed))])


def model_input(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """The feature columns as the model's signature declares them: every integer column as int64.

    MLflow's schema check accepts any narrower integer for a `long` column but refuses int64 for an
    `integer` or `double` one, so `long` lets callers pass counts as whatever integers they hold.
    """
    out = frame[features].copy()
    for name in features:
        dtype = out[name].dtype
        if pd.api.types.is_integer_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
            out[name] = out[name].astype("int64")
    return out


@dataclass
class Candidate:
    family: str
    pipeline: Any
    proba: np.ndarray
    threshold: float
    metrics: dict[str, float]
    fit_seconds: float

    @property
    def params(self) -> dict[str, Any]:
        clf = self.pipeline.named_steps["classifier"].get_params()
        return {k: v for k, v in sorted(clf.items()) if isinstance(v, (int, float, str, bool, type(None)))}


def fit_candidates(
    train: pd.DataFrame, valid: pd.DataFrame, features: list[str], seed: int, families: list[str] | None = None
) -> list[Candidate]:
    """Fit each family on ``train`` and measure it on ``valid`` at its own max-F1 threshold."""
    numeric, categorical = split_columns(train, features)
    y_train = train[LABEL].astype(bool).to_numpy()
    y_valid = valid[LABEL].astype(bool).to_numpy()
    out = []
    for family in families or list(FAMILIES):
        started = time.perf_counter()
        pipeline = build_pipeline(family, numeric, categorical, seed).fit(train[features], y_train)
        seconds = time.perf_counter() - started
        proba = pipeline.predict_proba(valid[features])[:, 1]
        threshold = best_threshold(y_valid, proba)
        out.append(
            Candidate(family, pipeline, proba, threshold, classification_metrics(y_valid, proba, threshold), seconds)
        )
    return out


def choose(candidates: list[Candidate]) -> Candidate:
    """The best candidate on validation: highest ROC-AUC, then lowest log-loss, then family order."""
    if not candidates:
        raise MLError("no model family to train")
    return min(
        enumerate(candidates), key=lambda ic: (-round(ic[1].metrics["roc_auc"], 12), ic[1].metrics["log_loss"], ic[0])
    )[1]


# ---------------------------------------------------------------------------------------
# a training run
# ---------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What one `streamflow train` produced: the registered version, its metrics and lineage, timings."""

    as_of: date
    model_name: str
    model_version: str
    run_id: str
    family: str
    metrics: dict[str, float]
    candidates: dict[str, dict[str, float]]
    lineage: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return self.metrics["threshold"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "run_id": self.run_id,
            "family": self.family,
            "metrics": self.metrics,
            "candidates": self.candidates,
            "lineage": self.lineage,
            "timings": self.timings,
        }


def _dbt_lineage(settings: Settings) -> dict[str, str]:
    """dbt version and invocation of the last build, from its manifest when there is one."""
    manifest = settings.dbt_target_dir / "manifest.json"
    try:
        meta = json.loads(manifest.read_text()).get("metadata", {})
    except (OSError, ValueError):
        return {}
    return {k: str(meta[k]) for k in ("dbt_version", "invocation_id", "generated_at") if k in meta}


def _pip_requirements() -> list[str]:
    return [f"{pkg}=={installed_version(pkg)}" for pkg in ("scikit-learn", "pandas", "numpy", "skops", "mlflow")]


def load_training_data(settings: Settings, as_of: date, source: FeatureSource):
    """(training frame in canonical order, features, label periods, validation plan) for a run at ``as_of``."""
    available = source.label_periods()
    periods = periods_up_to(available, as_of)
    if not periods:
        known = ", ".join(p.isoformat() for p in sorted(available)) or "none"
        raise MLError(
            f"no labelled period before {as_of} (labelled periods in the warehouse: {known}). Labels for a month "
            "arrive with the next month's drop: ingest and build at least two months, then train at the later as_of."
        )
    features = source.model_features()
    frame = source.training_frame(periods)
    missing = [c for c in ("user_id", "as_of", LABEL, *features) if c not in frame.columns]
    if missing:
        raise MLError(f"the training frame of feature service {source.service!r} lacks columns {missing}")
    if frame.empty:
        raise MLError(
            f"the training frame for periods {[p.isoformat() for p in periods]} is empty: "
            "were the features materialized (`streamflow build`)?"
        )
    frame = canonical_order(frame[["user_id", "as_of", LABEL, *features]])
    frame[LABEL] = frame[LABEL].astype(bool)
    return frame, features, periods, plan_validation(periods)


def train(
    settings: Settings,
    as_of: date,
    *,
    source: FeatureSource | None = None,
    families: list[str] | None = None,
    progress: Progress = SILENT,
) -> TrainResult:
    """Train on every labelled period before ``as_of``, log the run and register the best as ``challenger``."""
    source = source or FeastSource(settings)
    client = configure(settings)  # fail fast when the tracking store is down, before any fitting

    progress.start("building the training frame")
    started = time.perf_counter()
    frame, features, periods, plan = load_training_data(settings, as_of, source)
    train_df, valid_df = split_frame(frame, plan, fraction=settings.validation_fraction, seed=settings.seed)
    whole = (len(frame), frame_digest(frame))  # all the lineage needs of the whole frame
    del frame  # only the training and validation rows stay in memory while fitting
    data_seconds = time.perf_counter() - started

    progress.start(f"fitting {len(families or FAMILIES)} model families on {len(train_df):,} rows")
    started = time.perf_counter()
    with limited_threads(settings):
        candidates = fit_candidates(train_df, valid_df, features, settings.seed, families)
    best = choose(candidates)
    train_seconds = time.perf_counter() - started

    lineage = _lineage(settings, as_of, source, best, whole, features, periods, plan, train_df, valid_df)

    progress.start("logging the run and registering the model")
    started = time.perf_counter()
    with pipeline_lock(settings, "train", as_of):  # registering moves the challenger alias: one writer
        run_id, model_version = _log_and_register(
            settings, client, as_of, best, candidates, lineage, train_df, valid_df, features
        )
        with connect(settings) as conn:
            runlog.record_month(conn, as_of, "trained", {"model_version": model_version, "run_id": run_id})
    log_seconds = time.perf_counter() - started
    timings = {"data_seconds": data_seconds, "train_seconds": train_seconds, "log_register_seconds": log_seconds}
    client.set_tag(run_id, "streamflow.timings", json.dumps({k: round(v, 3) for k, v in timings.items()}))
    return TrainResult(
        as_of=as_of,
        model_name=settings.model_name,
        model_version=model_version,
        run_id=run_id,
        family=best.family,
        metrics=dict(best.metrics),
        candidates={c.family: dict(c.metrics) for c in candidates},
        lineage=lineage,
        timings=timings,
    )


def _lineage(
    settings: Settings,
    as_of: date,
    source: FeatureSource,
    best: Candidate,
    whole: tuple[int, str],
    features: list[str],
    periods: list[date],
    plan: ValidationPlan,
    train_df: pd.DataFrame,
    valid_df: pd.DataFrame,
) -> dict[str, Any]:
    """Where a model comes from: periods, split, row counts, data digests, code and feature versions. ``whole``:
    the training frame's (rows, digest), taken before it was freed."""
    lineage = {
        "as_of": as_of.isoformat(),
        "label_periods": [p.isoformat() for p in periods],
        "validation_strategy": plan.strategy,
        "train_periods": [p.isoformat() for p in plan.train_periods],
        "validation_periods": [p.isoformat() for p in plan.validation_periods],
        "rows": {"total": whole[0], "train": len(train_df), "validation": len(valid_df)},
        "churners": {"train": int(train_df[LABEL].sum()), "validation": int(valid_df[LABEL].sum())},
        "training_frame_sha256": whole[1],
        "validation_frame_sha256": frame_digest(valid_df),
        "git_commit": git_commit(settings.project_dir),
        "feature_service": source.service,
        "feast_project": settings.feast_project,
        "features": features,
        "seed": settings.seed,
        "family": best.family,
    }
    dbt = _dbt_lineage(settings)
    if dbt:
        lineage["dbt"] = dbt
    return lineage


# ---------------------------------------------------------------------------------------
# logging the run and registering the model in MLflow
# ---------------------------------------------------------------------------------------
def _log_and_register(settings, client, as_of, best, candidates, lineage, train_df, valid_df, features):
    """Log the run (tags, params, metrics, lineage, validation rows, model) and register it as challenger."""
    experiment_id = ensure_experiment(client, settings, settings.mlflow_experiment)
    example = model_input(valid_df.head(5), features)
    signature = _signature(best, valid_df, features)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train {as_of.isoformat()} {best.family}") as run:
        _log_run(settings, as_of, best, candidates, lineage, train_df, valid_df, features)
        info = mlflow.sklearn.log_model(
            best.pipeline,
            name=MODEL_NAME_IN_RUN,
            signature=signature,
            input_example=example,
            pip_requirements=_pip_requirements(),
            registered_model_name=settings.model_name,
            pyfunc_predict_fn="predict_proba",
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
            metadata={"threshold": best.threshold, "features": features, "lineage": lineage},
        )
    version = str(info.registered_model_version)
    _register(settings, client, version, as_of, best, lineage)
    return run.info.run_id, version


def _signature(best: Candidate, valid_df: pd.DataFrame, features: list[str]):
    """The model's input and output schema, inferred from validation rows."""
    with warnings.catch_warnings():
        # integer columns are declared `long` on purpose (see model_input); MLflow's hint says so again
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        return infer_signature(
            model_input(valid_df.head(200), features), best.pipeline.predict_proba(valid_df.head(200)[features])
        )


def _log_run(settings, as_of, best, candidates, lineage, train_df, valid_df, features) -> None:
    """Tags, parameters, metrics and artifacts of the active training run (everything but the model)."""
    numeric, _categorical = split_columns(train_df, features)
    schema = [
        {"name": f, "dtype": str(train_df[f].dtype), "kind": "numeric" if f in numeric else "categorical"}
        for f in features
    ]
    predictions = valid_df[["user_id", "as_of", LABEL]].assign(
        churn_probability=best.proba, churn_label_predicted=best.proba >= best.threshold
    )
    mlflow.set_tags(
        {
            "mlflow.source.git.commit": lineage["git_commit"],
            "streamflow.run_type": "train",
            "streamflow.as_of": as_of.isoformat(),
            "streamflow.feature_service": lineage["feature_service"],
            "streamflow.training_frame_sha256": lineage["training_frame_sha256"],
        }
    )
    mlflow.log_params(_run_params(settings, as_of, best, lineage, features))
    mlflow.log_metrics(_run_metrics(best, candidates, valid_df))
    mlflow.log_dict(lineage, LINEAGE_ARTIFACT)
    mlflow.log_dict({"features": schema}, "features.json")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "validation"
        folder.mkdir()
        predictions.to_parquet(folder / "predictions.parquet", index=False)
        valid_df.to_parquet(folder / "frame.parquet", index=False)
        mlflow.log_artifacts(str(folder), "validation")


def _run_params(settings: Settings, as_of: date, best: Candidate, lineage: dict, features: list[str]) -> dict:
    return {
        "family": best.family,
        "as_of": as_of.isoformat(),
        "label_periods": ",".join(lineage["label_periods"]),
        "validation_strategy": lineage["validation_strategy"],
        "validation_periods": ",".join(lineage["validation_periods"]),
        "train_rows": lineage["rows"]["train"],
        "validation_rows": lineage["rows"]["validation"],
        "feature_service": lineage["feature_service"],
        "n_features": len(features),
        "seed": settings.seed,
        "class_weight": "balanced",
        "threshold_rule": "max F1 on validation",
        **{f"classifier.{k}": v for k, v in best.params.items()},
    }


def _run_metrics(best: Candidate, candidates: list[Candidate], valid_df: pd.DataFrame) -> dict[str, float]:
    """The chosen model's metrics, every candidate's under its family name, and the validation rows."""
    metrics = dict(best.metrics)
    for c in candidates:
        metrics.update({f"{c.family}.{k}": v for k, v in c.metrics.items()})
    metrics["validation_rows"] = float(len(valid_df))
    metrics["validation_churn_rate"] = float(np.mean(valid_df[LABEL].to_numpy()))
    return metrics


def _register(
    settings: Settings, client: MlflowClient, version: str, as_of: date, best: Candidate, lineage: dict
) -> None:
    """Tag the new version, describe the model once, and point ``challenger`` at the version."""
    name = settings.model_name
    for key, value in {
        "as_of": as_of.isoformat(),
        "family": best.family,
        "feature_service": lineage["feature_service"],
        "validation_frame_sha256": lineage["validation_frame_sha256"],
        "threshold": f"{best.threshold:.6f}",
        "roc_auc": f"{best.metrics['roc_auc']:.6f}",
    }.items():
        client.set_model_version_tag(name, version, key, value)
    faults.pause("train.registered")
    registered = client.get_registered_model(name)
    if not registered.description:
        client.update_registered_model(
            name,
            description="Probability that an active subscriber cancels before the next month end. Trained by "
            "`streamflow train`; aliases: `challenger` (latest candidate), `champion` (serves).",
        )
    client.set_registered_model_alias(name, CHALLENGER, version)
