"""The one way every part of the platform gets a database connection or URL."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import psycopg

from streamflow.core.settings import Settings
from streamflow.core.stack import get_stack


def with_role(settings: Settings, role: str) -> Settings:
    """These settings, logging in to the embedded server as ``role`` (pipeline, api, analyst). On an external
    server the URLs carry the login: give the process its own STREAMFLOW_DATABASE_URL (compose does)."""
    return settings.model_copy(update={"db_role": role})


def database_url(settings: Settings, database: str | None = None, driver: str | None = None) -> str:
    """URL of a database on the platform's server (the warehouse unless ``database`` is given)."""
    return get_stack(settings).url(database, driver)


def connect(settings: Settings, database: str | None = None, **kwargs) -> psycopg.Connection:
    """A new psycopg connection to the warehouse (or ``database``)."""

    kwargs.setdefault("connect_timeout", 10)
    return psycopg.connect(database_url(settings, database), **kwargs)


def connection_parts(settings: Settings, database: str | None = None) -> dict[str, str]:
    """host, port, user, password, dbname of a database: what dbt and Feast profiles need."""
    parts = urlsplit(database_url(settings, database))
    return {
        "host": parts.hostname or "localhost",
        "port": str(parts.port or 5432),
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "dbname": parts.path.lstrip("/"),
    }


def registry_url(settings: Settings) -> str:
    """SQLAlchemy URL of the SQL registry (psycopg 3 driver)."""
    if settings.feast_registry_url:
        return settings.feast_registry_url
    return database_url(settings, settings.feast_registry_db, driver="psycopg")
