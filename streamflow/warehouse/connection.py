"""The warehouse connection of the dbt steps: a clear DbtError when the database cannot be reached."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg

from streamflow.core.db import connect
from streamflow.core.settings import Settings
from streamflow.warehouse.runner import DbtError


@contextlib.contextmanager
def warehouse_connection(settings: Settings, **kwargs) -> Iterator[psycopg.Connection]:
    """A warehouse connection, or a DbtError that says the database cannot be reached."""
    try:
        conn = connect(settings, **kwargs)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DbtError(
            f"the warehouse database is not reachable ({first}); start it with `streamflow stack up` "
            "or check STREAMFLOW_DATABASE_URL"
        ) from None
    with conn:
        yield conn
