"""The one pipeline lock: every step that writes the warehouse holds it, one writer at a time.

A PostgreSQL session advisory lock, held on a connection of its own for as long as the step runs, so
a killed process frees it with its connection. Readers (the API, analysts) never take it. A second
writer waits, saying which step holds the lock, for which month, since when and in which process,
up to ``settings.lock_wait_seconds``, then fails with the same message.

The lock is re-entrant within a process (a step that calls another step holds it once), and a child
process started by the holder (``streamflow run`` starts ``airflow dags test``, whose tasks are steps)
inherits it through ``STREAMFLOW_PIPELINE_LOCK``: the backend pid of the holder's session, checked to
still hold the lock before the child trusts it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime

import psycopg

from streamflow.core.db import database_url
from streamflow.core.errors import StreamflowError
from streamflow.core.redact import password_of, scrub
from streamflow.core.settings import Settings

LOCK_KEY = 804_121_000
ENV_VAR = "STREAMFLOW_PIPELINE_LOCK"
APP_PREFIX = "streamflow: "
POLL_SECONDS = 0.5
log = logging.getLogger("streamflow.lock")

_held: dict[str, int] = {}  # database URL -> depth of the lock held by this process
_held_lock = threading.Lock()


class LockTimeout(StreamflowError):
    """Another writer held the pipeline lock for longer than this step would wait."""


class DatabaseUnreachable(StreamflowError):
    """The warehouse database does not answer."""


def _holder(conn) -> str | None:
    """Who holds the lock now: the application name of its session (step, month, pid, since)."""
    row = conn.execute(
        """select a.application_name, a.pid from pg_locks l join pg_stat_activity a on a.pid = l.pid
           where l.locktype = 'advisory' and l.objid = %s and l.classid = 0 and l.granted
             and l.database = (select oid from pg_database where datname = current_database()) limit 1""",
        (LOCK_KEY,),
    ).fetchone()
    if row is None:
        return None
    name, pid = row
    return name.removeprefix(APP_PREFIX) if name else f"an unnamed session (backend pid {pid})"


def describe(step: str, as_of: date | None) -> str:
    """What a holder calls itself (PostgreSQL keeps 63 characters of an application name)."""
    since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    what = f"{step} {as_of}" if as_of else step
    return f"{what} (pid {os.getpid()}@{socket.gethostname()[:10]}, since {since})"[: 63 - len(APP_PREFIX)]


def _inherited(settings: Settings, url: str) -> bool:
    """True when a parent process holds the lock for us and still does."""
    backend = os.environ.get(ENV_VAR)
    if not backend or not backend.isdigit():
        return False
    with _connect(url, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute(
            """select 1 from pg_locks where locktype = 'advisory' and objid = %s and classid = 0
               and granted and pid = %s
               and database = (select oid from pg_database where datname = current_database())""",
            (LOCK_KEY, int(backend)),
        ).fetchone()
    return row is not None


@contextlib.contextmanager
def pipeline_lock(
    settings: Settings, step: str, as_of: date | None = None, *, wait_seconds: float | None = None
) -> Iterator[None]:
    """Hold the warehouse's writer lock while ``step`` (for month ``as_of``) runs.

    Raises LockTimeout when another writer keeps it longer than ``wait_seconds`` (default: the
    ``lock_wait_seconds`` setting).
    """
    url = database_url(settings)
    with _held_lock:
        depth = _held.get(url, 0)
        if depth:
            _held[url] = depth + 1
    if depth:
        try:
            yield
        finally:
            with _held_lock:
                _held[url] -= 1
        return
    if _inherited(settings, url):
        yield
        return
    wait = settings.lock_wait_seconds if wait_seconds is None else wait_seconds
    me = describe(step, as_of)
    conn = _connect(url, autocommit=True, connect_timeout=10, application_name=APP_PREFIX + me)
    try:
        _acquire(conn, me, wait)
        with _held_lock:
            _held[url] = 1
        previous = os.environ.get(ENV_VAR)
        os.environ[ENV_VAR] = str(conn.info.backend_pid)
        try:
            yield
        finally:
            _restore(previous)
            with _held_lock:
                _held.pop(url, None)
    finally:
        conn.close()  # closing the session releases the lock, even after an error


def _connect(url: str, **kwargs) -> psycopg.Connection:
    try:
        return psycopg.connect(url, **kwargs)
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:  # down, or a malformed URL
        first = scrub((str(exc).strip().splitlines() or [type(exc).__name__])[0], password_of(url))
        raise DatabaseUnreachable(
            f"the warehouse database is not reachable ({first})",
            hint="start it with `streamflow stack up`, or check STREAMFLOW_DATABASE_URL",
        ) from None


def _acquire(conn, me: str, wait: float) -> None:
    deadline = time.monotonic() + wait
    said = False
    while not conn.execute("select pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:
        holder = _holder(conn) or "a session that just ended"
        if time.monotonic() >= deadline:
            raise LockTimeout(
                f"{me.split(' (pid ')[0]} could not start: the pipeline lock is held by {holder}, "
                f"and {wait:g} s of waiting ran out",
                hint="wait for that step to end (or stop it), then run this again",
            )
        if not said:
            log.warning("waiting for the pipeline lock, held by %s (up to %g s)", holder, wait)
            said = True
        time.sleep(POLL_SECONDS)


def _restore(previous: str | None) -> None:
    if previous is None:
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = previous
