"""Environment variables that external tools (dbt, Feast, psql, MLflow) read, derived from settings."""

from __future__ import annotations

from streamflow.core.db import connection_parts, database_url, registry_url
from streamflow.core.settings import Settings

# MLflow 3 deserializes pickled models, and skops models with the trusted types their own artifact lists,
# unless this is false. StreamFlow loads models only through ml.model_format (skops, a fixed list of types):
# every process it starts gets the switch off. A fixed value, not a setting: there is no reason to turn it on.
PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


def model_safety_environment() -> dict[str, str]:
    """MLflow's model deserialization switched off (see ``PICKLE_SWITCH``)."""
    return {PICKLE_SWITCH: "false"}


def settings_environment(settings: Settings) -> dict[str, str]:
    """Every setting as the STREAMFLOW_* variable that reproduces it in another process (unset ones
    are left out), so child processes (Airflow tasks, servers, the CLI) build exactly these settings;
    with them, MLflow's model deserialization switched off (:func:`model_safety_environment`)."""
    env = model_safety_environment()
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"STREAMFLOW_{name.upper()}"] = str(value)
    return env


def tool_environment(settings: Settings) -> dict[str, str]:
    """The variables `dbt`, `feast` and `psql` need to reach the platform's databases (and the switch that
    keeps MLflow from deserializing models, for whatever runs in that environment: Airflow and its tasks)."""
    wh = connection_parts(settings)
    env = {
        **model_safety_environment(),
        "STREAMFLOW_PG_HOST": wh["host"],
        "STREAMFLOW_PG_PORT": wh["port"],
        "STREAMFLOW_PG_USER": wh["user"],
        "STREAMFLOW_PG_PASSWORD": wh["password"],
        "STREAMFLOW_PG_DATABASE": wh["dbname"],
        "PGHOST": wh["host"],
        "PGPORT": wh["port"],
        "PGUSER": wh["user"],
        "PGPASSWORD": wh["password"],
        "PGDATABASE": wh["dbname"],
        "STREAMFLOW_WAREHOUSE_URL": database_url(settings),
    }
    env.update(dbt_environment(settings))
    env.update(feast_environment(settings))
    return env


def dbt_environment(settings: Settings) -> dict[str, str]:
    """What plain `dbt` needs besides the connection: where the project, profile and artifacts are,
    the profile's target schema and threads, the quality gate's threshold, no usage statistics sent."""
    return {
        "DBT_PROJECT_DIR": str(settings.dbt_project_dir),
        "DBT_PROFILES_DIR": str(settings.dbt_project_dir),
        "DBT_TARGET_PATH": str(settings.dbt_target_dir),
        "DBT_LOG_PATH": str(settings.dbt_log_dir),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "STREAMFLOW_DBT_TARGET_SCHEMA": settings.dbt_target_schema,
        "STREAMFLOW_DBT_THREADS": str(settings.dbt_threads),
        "STREAMFLOW_GATE_MAX_SUBSCRIBER_CHANGE": str(settings.gate_max_subscriber_change),
    }


def feast_environment(settings: Settings) -> dict[str, str]:
    """What the `feast` CLI needs in feature_repo/ besides the connection: the project and the SQL
    registry of feature_store.yaml, and where the dbt manifest that types the feature views is."""

    return {
        "STREAMFLOW_FEAST_PROJECT": settings.feast_project,
        "STREAMFLOW_FEAST_REGISTRY_URL": registry_url(settings),
        "STREAMFLOW_DBT_TARGET_PATH": str(settings.dbt_target_dir),
    }
