"""A platform of its own for the API's integration tests: a private PostgreSQL holding a copy of the session's
built warehouse, Feast applied and materialized (January to March), a champion trained and promoted through
the real MLflow path, and `streamflow serve` running on a free loopback port.

Private, because the tests stop and restart its PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pandas as pd
from psycopg import sql

from ml.promote import promote
from ml.train import train
from streamflow.core.db import connect, connection_parts
from streamflow.core.names import FEATURE_MARTS
from streamflow.core.settings import Settings
from streamflow.core.stack import EmbeddedPostgres, _bin_dir
from streamflow.features import apply, materialize
from streamflow.features import contract as fc
from streamflow.features.store import feature_store
from tests.conftest import free_port, make_settings, settings_env

JAN, FEB, MAR = date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31)
TOKEN = "integration-test-token"  # STREAMFLOW_API_TOKEN of every world
READ_TOKEN = "integration-read-token"  # STREAMFLOW_API_READ_TOKEN, for worlds built with api_read_token=READ_TOKEN
STREAMFLOW = str(Path(sys.executable).with_name("streamflow"))


def _pg_env(settings: Settings, database: str | None = None) -> dict[str, str]:
    parts = connection_parts(settings, database)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGHOST=parts["host"],
        PGPORT=parts["port"],
        PGUSER=parts["user"],
        PGPASSWORD=parts["password"],
        PGDATABASE=parts["dbname"],
    )
    return env


def copy_warehouse(source: Settings, database: str, target: Settings, dump: Path) -> None:
    """pg_dump the ``database`` of the source server into the target's warehouse database (pg_restore)."""
    bins = _bin_dir()
    subprocess.run(
        [str(bins / "pg_dump"), "--format=custom", "--no-owner", f"--file={dump}"],
        env=_pg_env(source, database),
        check=True,
        capture_output=True,
        timeout=300,
    )
    subprocess.run(
        [str(bins / "pg_restore"), "--no-owner", "--no-privileges", f"--dbname={target.warehouse_db}", str(dump)],
        env=_pg_env(target),
        check=True,
        capture_output=True,
        timeout=300,
    )


@dataclass
class World:
    settings: Settings
    url: str
    server: subprocess.Popen
    log: Path
    active: list[str]  # users active at March (known to the online store)
    leavers: list[str]  # users active in January only (not online)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def wait_http(
    url: str, proc: subprocess.Popen | None = None, log: Path | None = None, timeout: float = 240, status: int = 200
) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}\n{log.read_text()[-4000:] if log else ''}")
        try:
            last = httpx.get(url, timeout=5)
            if last.status_code == status:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    tail = log.read_text()[-4000:] if log else ""
    raise AssertionError(f"{url} did not answer {status} within {timeout} s (last: {last})\n{tail}")


@contextlib.contextmanager
def api_server(settings: Settings, log: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`streamflow serve` for these settings on a free loopback port, until the block ends."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [STREAMFLOW, "serve", "--host", "127.0.0.1", "--port", str(port), *extra],
            env=settings_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ready", proc, log)
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


# the settings of every world; a clone may change only those read at run time (RUNTIME_SETTINGS)
WORLD_SETTINGS = dict(
    api_token=TOKEN,
    model_poll_seconds=1.0,
    feature_refresh_seconds=2.0,
    batch_limit=150,
    promotion_min_roc_auc=0.5,
)
RUNTIME_SETTINGS = frozenset(
    {
        "api_token",
        "api_read_token",
        "model_poll_seconds",
        "feature_refresh_seconds",
        "batch_limit",
        "shadow_flush_seconds",
        "api_port",
        "mlflow_port",
        "docs_port",
        "airflow_port",
    }
)


def build_world(home: Path, warehouse: Settings, tmp: Path, **overrides) -> Settings:
    """Settings of a platform under ``home`` with the built warehouse copied in, Feast applied and January to
    March materialized, and version 1 (trained at March) promoted to champion. ``overrides``: other settings (the
    Redis online store, say). A world with the default built state is cheaper as a :func:`clone_world`."""
    values = dict(dbt_target_path=warehouse.dbt_target_path, **WORLD_SETTINGS)
    settings = make_settings(home, **{**values, **overrides})
    EmbeddedPostgres(settings).up()
    copy_warehouse(warehouse, "dbt_warehouse_template", settings, tmp / "warehouse.dump")
    apply.apply(settings)
    for month in (JAN, FEB, MAR):
        materialize.materialize(settings, month)
    train(settings, MAR)
    result = promote(settings)
    assert result.champion_after == "1", result.as_dict()
    return settings


def clone_world(template: Settings, home: Path, **overrides) -> Settings:
    """A world of its own under ``home``, the same as :func:`build_world` gives, copied from the stopped
    ``template`` world (its home: the data directory, secrets, MLflow artifacts) and started on a free port.

    Independent of the template and of every other clone: its own server, data directory and artifacts.
    ``overrides``: settings read at run time only (RUNTIME_SETTINGS); a world whose built state differs (the
    Redis online store) is built with :func:`build_world`."""
    built_state = set(overrides) - RUNTIME_SETTINGS
    assert not built_state, f"{sorted(built_state)} change what is built: use build_world"
    source = EmbeddedPostgres(template)
    assert not source.is_running(), "the template world's server must be stopped while it is copied"
    subprocess.run(["cp", "-a", f"{source.home}/.", str(home)], check=True, capture_output=True, timeout=300)
    settings = make_settings(home, dbt_target_path=template.dbt_target_path, **{**WORLD_SETTINGS, **overrides})
    server = EmbeddedPostgres(settings)
    server.log_file.write_text("")  # the template's server log is not this server's
    server.up()
    rehome_mlflow(settings, source.home, server.home)
    rehome_artifacts(settings, source.home, server.home)
    return settings


def rehome_artifacts(settings: Settings, old: Path, new: Path) -> None:
    """Rewrite ``old`` (the template's home) as ``new`` in the artifact files that name it (MLmodel)."""
    for path in settings.artifacts_dir.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if f"{old}/".encode() not in data:
            continue
        text = data.decode()  # a binary artifact naming the home would fail here rather than be corrupted
        path.write_text(text.replace(f"{old}/", f"{new}/"))


def rehome_mlflow(settings: Settings, old: Path, new: Path) -> None:
    """Point every location the MLflow store holds under ``old`` (artifact roots of experiments, runs, logged
    models and model versions: absolute file URIs) at the same place under ``new``."""
    with connect(settings, settings.mlflow_db, autocommit=True) as conn:
        columns = conn.execute(
            "select table_name, column_name from information_schema.columns "
            "where table_schema = 'public' and data_type in ('text', 'character varying')"
        ).fetchall()
        for table, column in columns:
            conn.execute(
                sql.SQL("update {t} set {c} = replace({c}, %(old)s, %(new)s) where strpos({c}, %(old)s) > 0").format(
                    t=sql.Identifier(table), c=sql.Identifier(column)
                ),
                {"old": f"{old}/", "new": f"{new}/"},
            )


def users_by_history(settings: Settings) -> tuple[list[str], list[str]]:
    with connect(settings) as conn:
        months = {
            u: set(m)
            for u, m in conn.execute(
                "select user_id, array_agg((as_of at time zone 'UTC')::date) "
                "from marts.subscriptions_profile group by 1"
            )
        }
    active = sorted(u for u, m in months.items() if MAR in m)
    leavers = sorted(u for u, m in months.items() if m == {JAN})
    return active, leavers


def write_old_values(settings: Settings, user: str, month: date, dated: datetime | None = None) -> None:
    """Put a user's values of ``month`` into the online store through Feast (as a write that was never
    followed by newer ones would leave them), dated ``dated`` when given (else the month's as_of)."""
    store = feature_store(settings)
    stamp = datetime(month.year, month.month, month.day, tzinfo=UTC)
    with connect(settings) as conn:
        for view in FEATURE_MARTS:
            cur = conn.execute(f"select * from marts.{view} where user_id = %s and as_of = %s", (user, stamp))
            frame = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
            assert len(frame) == 1, (view, user, month)
            frame[fc.TIMESTAMP_COLUMN] = pd.to_datetime(frame[fc.TIMESTAMP_COLUMN], utc=True)
            if dated is not None:
                frame[fc.TIMESTAMP_COLUMN] = pd.Series([dated] * len(frame))
            store.write_to_online_store(view, frame)
