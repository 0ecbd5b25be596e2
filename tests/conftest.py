"""Shared fixtures: a real PostgreSQL server started once per test session, and helpers to run
the real `streamflow` command line against it."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from streamflow.core.env import settings_environment
from streamflow.core.settings import Settings
from streamflow.core.stack import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
STREAMFLOW = str(Path(sys.executable).with_name("streamflow"))


# Each pytest worker (pytest-xdist) takes ports from a range of its own, below Linux's ephemeral range (32768-60999),
# so a port one worker found free is never handed to the other before its server binds it; and a process never hands
# out the same port twice (a test often picks several ports before starting what binds them).
PORTS_PER_WORKER = 4000
_handed_out: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(span: int = 1) -> int:
    """A loopback port free now and not handed out before by this process; with ``span``, the first of that many
    consecutive such ports (e.g. Ray's worker ports)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    low = 16000 + int(worker.removeprefix("gw") or 0) * PORTS_PER_WORKER
    for first in random.sample(range(low, low + PORTS_PER_WORKER - span), PORTS_PER_WORKER - span):
        ports = range(first, first + span)
        if not _handed_out.intersection(ports) and all(_bindable(p) for p in ports):
            _handed_out.update(ports)
            return first
    raise RuntimeError(f"no {span} free port(s) in {low}-{low + PORTS_PER_WORKER - 1}")


def make_settings(home: Path, **overrides) -> Settings:
    """Settings for a test: explicit values only, never the developer's .env or environment."""
    # dbt's target and logs under the test's home: tests that run at the same time never share them
    values = dict(
        home=home,
        project_dir=ROOT,
        database_url=None,
        pg_port=free_port(),
        dbt_target_path=Path(home) / "dbt" / "target",
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a `streamflow` subprocess needs to use exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFLOW_")}
    env.update(settings_environment(settings))
    env.update(extra)
    return env


def run_cli(settings: Settings, *args: str, check: bool = True, timeout: float = 600, **kw):
    """Run the real `streamflow` command line; returns the CompletedProcess."""
    proc = subprocess.run(
        [STREAMFLOW, *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=kw.pop("cwd", ROOT),
        **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"streamflow {' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


@contextlib.contextmanager
def server_home(prefix: str = "streamflow-test-"):
    """A state directory for an embedded server, outside pytest's private temp root.

    As root, PostgreSQL runs as an unprivileged user that must traverse the path to its data;
    pytest keeps its own temp root at mode 0700, so the server's home lives in /tmp instead."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield home
    finally:
        EmbeddedPostgres(make_settings(home)).down()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_settings() -> Settings:
    """Settings pointing at a real embedded PostgreSQL started for this test session."""
    with server_home() as home:
        settings = make_settings(home)
        EmbeddedPostgres(settings).up()
        yield settings
        EmbeddedPostgres(settings).down()


@pytest.fixture()
def own_home():
    """A fresh state directory for a test that starts its own embedded server."""
    with server_home() as home:
        yield home


@pytest.fixture(scope="session")
def pg_server(pg_settings) -> EmbeddedPostgres:
    return EmbeddedPostgres(pg_settings)


def fresh_database(settings: Settings, name: str) -> Settings:
    """A new, empty warehouse database on the same server; returns settings that use it.

    Lets a test module own its raw/marts state without starting another server."""
    import psycopg

    server = EmbeddedPostgres(settings)
    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    return settings.model_copy(update={"warehouse_db": name})


@pytest.fixture(scope="session")
def mlflow_settings(pg_settings) -> Settings:
    """Settings with a real MLflow store: a fresh `mlflow_test` database on the session PostgreSQL as
    tracking and registry backend, artifacts under the session's home. Shared by every MLflow test."""
    fresh_database(pg_settings, "mlflow_test")
    return pg_settings.model_copy(update={"mlflow_db": "mlflow_test", "mlflow_tracking_uri": None})


# ---------------------------------------------------------------------------------------
# the built warehouse (dbt), shared by the warehouse, Feast and ML tests
# ---------------------------------------------------------------------------------------
WAREHOUSE_MONTHS = 3  # drops ingested and built in `built_warehouse`; `session_drops` holds one more


@pytest.fixture(scope="session")
def session_drops(tmp_path_factory) -> list[Path]:
    """Four monthly drops (500 users, seed 42) written once per session by the real generator.

    `built_warehouse` holds the first three; the fourth is a next month a test can ingest."""
    from streamflow.drops.generator.run import generate

    out = tmp_path_factory.mktemp("drops")
    generate(out, months=WAREHOUSE_MONTHS + 1, users=500, seed=42)
    return sorted(out.glob("month_*"))


def clone_database(settings: Settings, source: str, name: str) -> Settings:
    """A fresh copy of database `source` on the same server (CREATE DATABASE ... TEMPLATE); returns
    settings that use it. Nobody may be connected to `source` while it is copied."""
    import psycopg

    server = EmbeddedPostgres(settings)
    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}" template "{source}"')
    return settings.model_copy(update={"warehouse_db": name})


@pytest.fixture(scope="session")
def built_warehouse(pg_settings, session_drops, tmp_path_factory) -> Settings:
    """Settings of a built warehouse: drops month_000..month_002 ingested and `streamflow build` run
    (gate, snapshots, marts), in the database `dbt_warehouse`. Read-only for tests: use
    `warehouse_copy(name)` for a private copy to change."""
    from streamflow.drops.ingest import ingest
    from streamflow.warehouse.build import build

    settings = fresh_database(pg_settings, "dbt_warehouse").model_copy(
        update={"dbt_target_path": tmp_path_factory.mktemp("dbt_warehouse") / "target"}
    )
    ingest(settings, session_drops[:WAREHOUSE_MONTHS])
    build(settings)
    # a pristine copy nobody connects to, so private copies can be made while tests read dbt_warehouse
    clone_database(settings, "dbt_warehouse", "dbt_warehouse_template")
    return settings


@pytest.fixture(scope="session")
def warehouse_copy(built_warehouse, tmp_path_factory):
    """Factory: `warehouse_copy(name)` -> settings of a fresh copy of the built warehouse in database
    `name`, with its own dbt target folder (the same name reuses dbt's parse cache)."""
    root = tmp_path_factory.mktemp("dbt_copies")

    def copy_of(name: str) -> Settings:
        settings = clone_database(built_warehouse, "dbt_warehouse_template", name)
        return settings.model_copy(update={"dbt_target_path": root / name / "target"})

    return copy_of


@pytest.fixture(scope="session")
def world_template(built_warehouse, tmp_path_factory) -> Settings:
    """The settings of a serving world (tests/serving_world.py: the built warehouse copied in, Feast applied and
    January to March materialized, a champion promoted) built once per session, its server stopped: modules
    take a `clone_world` of it, each with a server and a data directory of its own."""
    from tests.serving_world import build_world  # Feast and MLflow, imported only by sessions that serve

    with server_home("streamflow-world-template-") as home:
        settings = build_world(home, built_warehouse, tmp_path_factory.mktemp("world_template"))
        EmbeddedPostgres(settings).down()
        yield settings
