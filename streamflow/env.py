"""Environment variables that external tools (dbt, Feast, psql, MLflow) read, derived from settings."""

from __future__ import annotations

from streamflow.config import Settings
from streamflow.warehouse import connection_parts, database_url


def tool_environment(settings: Settings) -> dict[str, str]:
    """The variables `dbt`, `feast` and `psql` need to reach the platform's databases."""
    wh = connection_parts(settings)
    env = {
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
    return env
