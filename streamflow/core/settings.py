"""One settings object for the whole platform, read from ``STREAMFLOW_*`` variables and ``.env``.

Build it once with :func:`get_settings` and pass it down; no other module reads ``os.environ``
for its own configuration.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamflow.core import names
from streamflow.core.errors import StreamflowError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FEAST_ENGINES = ("local", "ray")
# host:port, optionally ray://host:port (Ray Client) or "auto" (the cluster `ray start` left on this machine)
_RAY_ADDRESS = re.compile(r"(ray://)?[A-Za-z0-9.\-\[\]:]+:\d{1,5}|auto")


class SettingsError(StreamflowError):
    """A setting has a value the platform cannot use."""


class Settings(BaseSettings):
    """Everything that changes between a laptop, CI and the compose stack."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMFLOW_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # --- where things live -------------------------------------------------------------
    project_dir: Path = Field(
        default=PROJECT_ROOT,
        description="Repository root: holds dbt_project/, feature_repo/, airflow/dags/.",
    )
    home: Path = Field(
        default=PROJECT_ROOT / ".streamflow",
        description="State directory of the embedded stack: database files, logs, secrets, MLflow artifacts, reports.",
    )

    # --- PostgreSQL ----------------------------------------------------------------------
    database_url: str | None = Field(
        default=None,
        description="postgresql:// URL of the warehouse database. Unset: the embedded server "
        "under `home` is used (started by `streamflow stack up`).",
    )
    pg_host: str = Field(default="127.0.0.1", description="Embedded server: listen address.")
    pg_port: int = Field(default=55432, description="Embedded server: TCP port.")
    pg_user: str = Field(default="streamflow", description="Embedded server: login role.")
    db_role: Literal["pipeline", "api", "analyst"] = Field(
        default="pipeline",
        description="Embedded server: the role this process logs in as: pipeline (owner of the warehouse), api "
        "(`streamflow serve` always uses it) or analyst (reads marts).",
    )
    warehouse_db: str = Field(default="streamflow", description="Embedded server: warehouse database.")
    mlflow_db: str = Field(default="mlflow", description="Embedded server: MLflow backend database.")
    airflow_db: str = Field(default="airflow", description="Embedded server: Airflow metadata database.")
    feast_registry_db: str = Field(default="feast", description="Embedded server: Feast SQL registry database.")

    lock_wait_seconds: float = Field(
        default=900.0,
        description="How long a step that writes the warehouse waits for the pipeline lock another writer "
        "holds before it gives up (exit 1).",
    )

    # --- dbt -----------------------------------------------------------------------------
    dbt_target_schema: str = Field(default="analytics", description="Base schema dbt builds into.")
    dbt_threads: int = Field(default=4, description="dbt threads.")
    gate_max_subscriber_change: float = Field(
        default=0.5,
        description="Quality gate: largest allowed relative change of active subscribers month over month.",
    )
    dbt_target_path: Path | None = Field(
        default=None,
        description="Folder dbt writes its artifacts to (manifest.json, run results, compiled SQL); its logs go "
        "to the sibling folder `logs`. Unset: dbt_project/target.",
    )

    # --- Feast ---------------------------------------------------------------------------
    feast_project: str = Field(default="streamflow", description="Feast project name.")
    feast_registry_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the Feast SQL registry. Unset: a database of the warehouse server.",
    )
    online_store: Literal["postgres", "redis"] = Field(default="postgres", description="Feast online store type.")
    redis_url: str = Field(
        default="localhost:6379", description="Redis connection string for Feast (host:port[,db=N])."
    )
    materialize_chunk_rows: int = Field(
        default=50_000,
        gt=0,
        description="Users materialization reads, encodes and writes at a time (bounds its memory).",
    )
    feast_engine: Literal["local", "ray"] = Field(
        default="local",
        description="Engine that materializes the marts into the online store: local (this process, chunked COPY) "
        "or ray (Feast's Ray compute engine, on the cluster at STREAMFLOW_RAY_ADDRESS).",
    )
    ray_address: str = Field(
        default="",
        description="Ray cluster the ray engine runs on (host:port of its head node, e.g. 127.0.0.1:6379). "
        "Empty: Ray starts a local cluster inside the materializing process.",
    )

    # --- MLflow --------------------------------------------------------------------------
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI (e.g. http://mlflow:5000). Unset: a PostgreSQL database "
        "of the embedded server, artifacts under `home`/mlartifacts.",
    )
    model_name: str = Field(default=names.MODEL_NAME, description="Registered model name.")
    promotion_min_roc_auc: float = Field(default=0.70, description="Absolute floor for a first champion.")
    promotion_margin: float = Field(default=0.01, description="ROC-AUC gain a challenger needs over the champion.")
    promotion_logloss_tolerance: float = Field(
        default=0.02, description="Largest log-loss increase a promoted challenger may show."
    )
    promotion_evidence: Literal["validation", "realized"] = Field(
        default="validation",
        description="What the promotion gate compares: validation (the candidate and the champion scored on the "
        "candidate's validation rows) or realized (a shadow's realized ROC-AUC against the champion's over the last "
        "labelled months, from marts.model_performance; a first champion still comes from validation).",
    )
    promotion_realized_months: int = Field(
        default=2,
        ge=1,
        description="With realized evidence: the last labelled months a shadow must have beaten the champion in.",
    )
    drift_share_threshold: float = Field(
        default=0.3, description="Share of drifted model features at or above which retraining is advised."
    )
    seed: int = Field(default=42, description="Seed for splits and models.")
    mlflow_experiment: str = Field(
        default="streamflow_churn",
        description="MLflow experiment of training runs; drift reports go to `<name>_drift`.",
    )
    feature_service: str = Field(
        default=names.MODEL_SERVICE, description="Feast feature service the model is trained and scored on."
    )
    validation_fraction: float = Field(
        default=0.25,
        description="Share of rows held out (stratified) for validation when only one labelled period exists.",
    )
    score_chunk_rows: int = Field(
        default=50_000,
        gt=0,
        description="Users batch scoring predicts, explains and writes at a time (bounds its memory); a month is "
        "still replaced in one transaction.",
    )
    ml_threads: int = Field(
        default=1,
        description="OpenMP/BLAS threads for training and batch scoring; 0 = all cores. One is fastest on a "
        "small machine shared with other services.",
    )
    oracle_dir: Path | None = Field(
        default=None,
        description="Folder with the generator's oracle files (oracle/period_<as_of>.csv), read only by "
        "`streamflow evaluate`. Unset: `home`/drops.",
    )

    # --- serving -------------------------------------------------------------------------
    api_host: str = Field(default="127.0.0.1", description="API bind address.")
    api_port: int = Field(default=8000, description="API port.")
    api_workers: int = Field(default=1, description="API worker processes.")
    api_token: SecretStr | None = Field(
        default=None,
        description="Admin bearer token of the API: /events and /admin/* (and the read routes). Unset: generated "
        "once into `home`/secrets/api_token on the embedded stack; a start-up error with STREAMFLOW_DATABASE_URL set.",
    )
    api_read_token: SecretStr | None = Field(
        default=None,
        description="Read bearer token of the API: /predict, /predict/batch and /features. Unset: those routes "
        "are open.",
    )
    model_poll_seconds: float = Field(default=10.0, description="How often the API checks the champion alias.")
    batch_limit: int = Field(default=500, description="Largest /predict/batch request.")
    feature_refresh_seconds: float = Field(
        default=60.0,
        description="How often the API re-reads the Feast registry (business clock, TTLs) and checks the online store.",
    )
    online_timeout_seconds: float = Field(
        default=2.0, description="API: connect and query timeout on the online store, in seconds."
    )
    model_fast_path: bool = Field(
        default=True,
        description="API: score with the compiled model (checked equal to the scikit-learn pipeline when loaded); "
        "false always runs the full pipeline.",
    )

    shadow: bool = Field(
        default=True,
        description="API: score the shadow model (registry alias `shadow`, else a challenger that was not promoted) "
        "off the request path into ml.shadow_scores; on or off.",
    )
    shadow_queue_size: int = Field(
        default=10_000,
        gt=0,
        description="API: predictions waiting to be scored in shadow, per worker; when full, new ones are dropped "
        "and counted (streamflow_shadow_dropped_total), never waited for.",
    )
    shadow_batch_size: int = Field(
        default=500, gt=0, description="API: shadow rows scored and written per batch (at most)."
    )
    shadow_flush_seconds: float = Field(
        default=1.0,
        gt=0,
        description="API: longest wait, in seconds, before a partial batch of shadow rows is scored and written.",
    )

    # --- UIs -----------------------------------------------------------------------------
    mlflow_port: int = Field(default=5000, description="`streamflow mlflow` UI port.")
    airflow_port: int = Field(default=8080, description="`streamflow airflow` UI port.")
    docs_port: int = Field(default=8081, description="`streamflow docs` port.")

    @field_validator("feast_engine", mode="before")
    @classmethod
    def _known_engine(cls, value: object) -> object:
        text = str(value).strip().lower()
        if text not in FEAST_ENGINES:
            raise SettingsError(
                f"STREAMFLOW_FEAST_ENGINE={value!r} is not an engine; allowed: {', '.join(FEAST_ENGINES)}",
                hint="set STREAMFLOW_FEAST_ENGINE=local (the default) or STREAMFLOW_FEAST_ENGINE=ray",
            )
        return text

    @field_validator("ray_address", mode="before")
    @classmethod
    def _ray_address(cls, value: object) -> object:
        text = str(value or "").strip()
        if text and not _RAY_ADDRESS.fullmatch(text):
            raise SettingsError(
                f"STREAMFLOW_RAY_ADDRESS={text!r} is not a Ray cluster address (host:port of the head node, "
                "e.g. 127.0.0.1:6379 or ray-head:6379)",
                hint="set STREAMFLOW_RAY_ADDRESS=<head host>:6379, or leave it empty for a local cluster",
            )
        return text

    # --- derived paths -------------------------------------------------------------------
    @property
    def dbt_project_dir(self) -> Path:
        return self.project_dir / "dbt_project"

    @property
    def dbt_target_dir(self) -> Path:
        """Where dbt writes manifest.json and run results (Feast and Airflow read the manifest here)."""
        return self.dbt_target_path or self.dbt_project_dir / "target"

    @property
    def dbt_log_dir(self) -> Path:
        return self.dbt_target_dir.parent / "logs"

    @property
    def feature_repo_dir(self) -> Path:
        return self.project_dir / "feature_repo"

    @property
    def dags_dir(self) -> Path:
        return self.project_dir / "airflow" / "dags"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def embedded(self) -> bool:
        """True when the platform manages its own PostgreSQL server."""
        return self.database_url is None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built once."""
    return Settings()
