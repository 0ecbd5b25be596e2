"""Where MLflow lives, and reading models back from its registry.

Embedded stack: tracking and registry in the ``mlflow`` database of the platform's PostgreSQL,
artifacts under ``settings.artifacts_dir``. With ``STREAMFLOW_MLFLOW_TRACKING_URI`` set (the compose
stack's MLflow server), the same calls use that server and its artifact store.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import psycopg
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ml.errors import MLError
from ml.metrics import METRICS
from ml.model_format import SKOPS_TRUSTED_TYPES as SKOPS_TRUSTED_TYPES  # train logs with the loader's list
from ml.model_format import load_pipeline
from streamflow.core.db import connect, database_url
from streamflow.core.env import PICKLE_SWITCH, model_safety_environment
from streamflow.core.names import CHALLENGER, CHAMPION, SHADOW
from streamflow.core.settings import Settings

LINEAGE_ARTIFACT = "lineage.json"
VALIDATION_FRAME_ARTIFACT = "validation/frame.parquet"
VALIDATION_PREDICTIONS_ARTIFACT = "validation/predictions.parquet"
MODEL_NAME_IN_RUN = "model"

# MLflow 3 unpickles models (and reads skops with the trusted types the artifact itself lists) unless
# MLFLOW_ALLOW_PICKLE_DESERIALIZATION is false. StreamFlow never loads through MLflow's loaders (see
# ml.model_format), and every process that reaches MLflow imports this module: switch them off here, whatever
# the caller's environment says, so nothing in the process (a library, a plugin) unpickles an artifact.
os.environ.update(model_safety_environment())


def tracking_uri(settings: Settings) -> str:
    """The configured MLflow server, else the embedded PostgreSQL's ``mlflow`` database."""
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    return database_url(settings, settings.mlflow_db, "psycopg2")


def artifact_root(settings: Settings) -> str | None:
    """Artifact location for new experiments: under ``home`` when embedded, the server's choice otherwise."""
    if settings.mlflow_tracking_uri:
        return None
    return settings.artifacts_dir.resolve().as_uri()


def display_uri(uri: str) -> str:
    """A tracking URI safe to print: the password is masked."""
    try:
        return make_url(uri).render_as_string(hide_password=True)
    except ArgumentError:
        return uri


def _unpickling_refused(record: logging.LogRecord) -> bool:
    """False for MLflow's warning that it could not check a logged model's input example because it may not
    deserialize models here: that check would load the model through MLflow's loader, which this process
    refuses on purpose. The skops file is still read back when it is written, with the project's trusted types."""
    message = record.getMessage()
    return not ("Failed to validate serving input example" in message and PICKLE_SWITCH in message)


def _quiet_logs() -> None:
    # schema migrations and the SQL store log every step at INFO; the CLI prints its own summary
    for name in (
        "alembic",
        "mlflow.store.db.utils",
        "mlflow.store.tracking.sqlalchemy_store",
        "mlflow.utils.uv_utils",
        "mlflow.tracking._model_registry.fluent",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    # pip_requirements are explicit; pip itself is absent from uv environments, which MLflow reports
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)
    # MLflow reads this switch from the environment on every download: no progress bars in our output
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    model_log = logging.getLogger("mlflow.models.model")
    if _unpickling_refused not in model_log.filters:
        model_log.addFilter(_unpickling_refused)


def _check_reachable(settings: Settings) -> None:
    if settings.mlflow_tracking_uri:
        return
    try:
        with connect(settings, settings.mlflow_db, connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        raise MLError(
            f"the MLflow database is not reachable ({str(exc).strip().splitlines()[0]}): "
            "start the stack with `streamflow stack up`"
        ) from None


def configure(settings: Settings) -> MlflowClient:
    """Point the MLflow library (fluent API and a client) at the platform's tracking and registry."""
    _check_reachable(settings)  # before any MLflow call: a stopped stack fails in a second
    _quiet_logs()
    uri = tracking_uri(settings)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, settings: Settings, name: str) -> str:
    """The id of experiment ``name``, created (with the platform's artifact location) when missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(settings)
    location = f"{root}/{name}" if root else None
    if root:
        settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        exp = client.get_experiment_by_name(name)  # created by a concurrent run
        if exp is None:
            raise
        return exp.experiment_id


def git_commit(project_dir: Path) -> str:
    """The checked-out commit of ``project_dir`` (read from .git, no git binary needed), else "unknown"."""
    git = project_dir / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = (project_dir / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        common = git / "commondir"
        roots = [git] + ([(git / common.read_text().strip()).resolve()] if common.is_file() else [])
        for root in roots:
            if (root / ref).is_file():
                return (root / ref).read_text().strip()
            packed = root / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split(" ", 1)[0]
    except (OSError, IndexError):
        pass
    return "unknown"


# ---------------------------------------------------------------------------------------
# registry reads
# ---------------------------------------------------------------------------------------
def version_by_alias(client: MlflowClient, name: str, alias: str):
    """The ModelVersion behind ``alias``, or None when the model or the alias does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


@dataclass
class LoadedModel:
    """A registered model version, loaded with what is needed to use it like the trainer did."""

    name: str
    version: str
    run_id: str
    pipeline: Any
    features: list[str]
    threshold: float
    metrics: dict[str, float] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def predict_proba(self, frame: pd.DataFrame):
        """Churn probability for each row of a frame that holds (at least) the model's features."""
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise MLError(f"model version {self.version} needs features the frame lacks: {missing}")
        return self.pipeline.predict_proba(frame[self.features])[:, 1]


def load_version(settings: Settings, version, client: MlflowClient | None = None) -> LoadedModel:
    """Load version ``version`` of the registered model, with its threshold, features and lineage.

    A version not stored as skops, or holding types outside ``SKOPS_TRUSTED_TYPES``, raises
    :class:`ml.model_format.UnsafeModel` before anything of it is deserialized.
    """
    client = client or configure(settings)
    name = settings.model_name
    mv = client.get_model_version(name, str(version))
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}")
    mlmodel = Model.load(local)
    meta = mlmodel.metadata or {}
    pipeline = load_pipeline(local, mlmodel, str(mv.version))  # skops only, with our trusted types; else refused
    run = client.get_run(mv.run_id)
    return LoadedModel(
        name=name,
        version=str(mv.version),
        run_id=mv.run_id,
        pipeline=pipeline,
        features=list(meta.get("features", [])),
        threshold=float(meta.get("threshold", 0.5)),
        metrics=dict(run.data.metrics),
        lineage=dict(meta.get("lineage", {})),
        tags=dict(mv.tags or {}),
    )


def load_model_alias(settings: Settings, alias: str, client: MlflowClient | None = None) -> LoadedModel:
    """Load the version behind ``alias`` (e.g. ``champion``); a clear error when there is none."""
    client = client or configure(settings)
    mv = version_by_alias(client, settings.model_name, alias)
    if mv is None:
        hint = (
            "train one with `streamflow train --as-of M`, then `streamflow promote`"
            if alias == CHAMPION
            else "train one with `streamflow train --as-of M`"
        )
        raise MLError(f"no {alias} version of model {settings.model_name!r} yet: {hint}")
    return load_version(settings, mv.version, client)


def shadow_of(client: MlflowClient, name: str):
    """(ModelVersion, alias) of the model scored in shadow next to the champion, or None: the version with the
    alias ``shadow`` when there is one, else the ``challenger`` when it is not the champion (a challenger the gate
    did not promote)."""
    shadow = version_by_alias(client, name, SHADOW)
    if shadow is not None:
        return shadow, SHADOW
    challenger = version_by_alias(client, name, CHALLENGER)
    if challenger is None:
        return None
    champion = version_by_alias(client, name, CHAMPION)
    if champion is not None and str(champion.version) == str(challenger.version):
        return None
    return challenger, CHALLENGER


def set_shadow(settings: Settings, version: str | None) -> str | None:
    """Point the alias ``shadow`` at ``version`` (None: remove it); returns the version it pointed at before."""
    client = configure(settings)
    name = settings.model_name
    before = version_by_alias(client, name, SHADOW)
    if version is None:
        if before is not None:
            client.delete_registered_model_alias(name, SHADOW)
    else:
        try:
            client.get_model_version(name, str(version))
        except MlflowException as exc:
            raise MLError(
                f"model {name!r} has no version {version}: {str(exc).strip().splitlines()[0]}",
                hint="`streamflow model show` lists the champion and the challenger",
            ) from None
        client.set_registered_model_alias(name, SHADOW, str(version))
    return str(before.version) if before is not None else None


def read_run_json(run_id: str, path: str) -> dict:
    """A JSON artifact of a run (call :func:`configure` first)."""
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
    return json.loads(Path(local).read_text())


def model_summary(settings: Settings) -> dict[str, Any]:
    """Champion, challenger and shadow (when set) with their validation metrics, without loading any model."""
    client = configure(settings)
    name = settings.model_name
    out: dict[str, Any] = {"model": name, "tracking_uri": display_uri(tracking_uri(settings))}
    for alias in (CHAMPION, CHALLENGER, SHADOW):
        mv = version_by_alias(client, name, alias)
        if mv is None:
            out[alias] = None
            continue
        run = client.get_run(mv.run_id)
        metrics = run.data.metrics
        tags = dict(mv.tags or {})
        out[alias] = {
            "version": str(mv.version),
            "aliases": sorted(mv.aliases or []),
            "run_id": mv.run_id,
            "as_of": tags.get("as_of"),
            "family": tags.get("family"),
            "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
            "metrics": {k: metrics[k] for k in METRICS if k in metrics},
            "validation_rows": int(metrics.get("validation_rows", 0)),
            "promotion": {
                k.removeprefix("promotion."): v for k, v in sorted(tags.items()) if k.startswith("promotion.")
            },
        }
    return out


def ui_server(settings: Settings, port: int) -> tuple[list[str] | None, dict[str, str], str]:
    """(command, environment, URL) that serves the MLflow UI for these settings.

    The command is None when the settings point at an MLflow server already (nothing to start).
    The store URI travels in the environment, not on the command line, so `ps` does not show the
    password. Job execution stays off: the UI needs uvicorn only.
    """
    uri = tracking_uri(settings)
    if uri.startswith(("http://", "https://")):
        return None, {}, uri
    _check_reachable(settings)
    with socket.socket() as probe:
        probe.settimeout(0.5)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise MLError(f"port {port} is already in use: pass --port or set STREAMFLOW_MLFLOW_PORT")
    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "MLFLOW_BACKEND_STORE_URI": uri,
            "MLFLOW_REGISTRY_STORE_URI": uri,
            "MLFLOW_ARTIFACTS_DESTINATION": settings.artifacts_dir.resolve().as_uri(),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
    )
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return cmd, env, f"http://127.0.0.1:{port}"
