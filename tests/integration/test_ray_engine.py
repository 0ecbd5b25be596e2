"""Materialization on Feast's Ray engine against the local engine, on a real two-node Ray cluster.

A head and a worker node are started on loopback (`ray start --block`, free ports, no dashboard, no usage
reporting, token authentication, a private temp dir) and stopped by this module: each `ray start --block`
runs in a session of its own and is terminated with everything it started (never `ray stop`, which stops
every Ray process on the machine, other users' included). Two Feast projects share one built warehouse:
StreamFlow's materialization fills one through the cluster (STREAMFLOW_FEAST_ENGINE=ray), the local engine
the other; every online value of every user and view must be the same, month after month.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg
import pytest

from streamflow.core.db import connect
from streamflow.core.names import FEATURE_MARTS, PUSH_VIEW
from streamflow.core.stack import EmbeddedPostgres
from streamflow.features import apply, materialize, online_store, store
from tests.conftest import free_port

pytestmark = pytest.mark.integration

JAN, FEB = date(2024, 1, 31), date(2024, 2, 29)
REGISTRY_DB = "ray_registry"
RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT = 60


def ts(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _ports(node: str) -> list[str]:
    """Every port a node listens on, free ones, so two nodes (and other clusters) share the machine."""
    low = free_port(span=41)  # the worker ports: 41 in a row, none of them handed out for anything else
    names = (
        "node-manager-port",
        "object-manager-port",
        "metrics-export-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
    )
    ports = [f"--{name}={free_port()}" for name in names]
    if node == "head":
        ports.append(f"--ray-client-server-port={free_port()}")
    return [*ports, f"--min-worker-port={low}", f"--max-worker-port={low + 40}"]


def _start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`ray start --block ...` in a session of its own; returns once the node runs."""
    out = log.open("w")
    proc = subprocess.Popen(
        [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while "Ray runtime started" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_node(proc)
            raise AssertionError(f"ray start did not come up:\n{log.read_text()}")
        time.sleep(0.2)
    return proc


def _stop_node(proc: subprocess.Popen) -> None:
    """Stop a node this module started: its `ray start --block` (which stops its daemons), then anything
    left in its session."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=3)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _session_gone(proc: subprocess.Popen, timeout: float = 15) -> bool:
    """Whether every process of the node's session has exited (waits for the killed ones to be reaped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def ray_cluster():
    """The address of a running two-node Ray cluster on 127.0.0.1; nothing of it runs after the module."""
    temp = Path(tempfile.mkdtemp(prefix="sfray", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray's GCS and raylets listen on every interface whatever the node address: only token holders may use them
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes: list[subprocess.Popen] = []
    try:
        # as Ray advises for a cluster: the head schedules, the worker node runs the tasks
        head = ["--head", f"--port={port}", f"--temp-dir={temp}", "--include-dashboard=false", "--num-cpus=0"]
        head += _ports("head")
        nodes.append(_start_node(head, env, temp / "head.log"))
        # the worker says "Ray runtime started" once its raylet has joined the head
        worker = [f"--address={address}", "--num-cpus=1", *_ports("worker")]
        nodes.append(_start_node(worker, env, temp / "worker.log"))
        yield address, {k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    finally:
        for proc in reversed(nodes):
            _stop_node(proc)
        assert all(_session_gone(p) for p in nodes), "a Ray process outlived the test"
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def base(warehouse_copy):
    settings = warehouse_copy("ray_wh")
    with psycopg.connect(EmbeddedPostgres(settings).url("postgres"), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{REGISTRY_DB}" with (force)')
        conn.execute(f'create database "{REGISTRY_DB}"')
    return settings.model_copy(update={"feast_registry_db": REGISTRY_DB})


def project(base, name: str, **update):
    settings = base.model_copy(update={"feast_project": name, **update})
    apply.apply(settings)
    return settings


def online_rows(settings) -> dict[str, list[tuple]]:
    """Every value the PostgreSQL online store holds, per view: (user key, feature, value, event time)."""
    out = {}
    with connect(settings) as conn:
        for view in FEATURE_MARTS:
            table = online_store.online_table(settings, view)
            out[view] = conn.execute(
                f"select entity_key, feature_name, value, value_text, vector_value, event_ts, created_ts "
                f"from {table} order by 1, 2"
            ).fetchall()
    return out


@pytest.fixture()
def ray_driver(ray_cluster, monkeypatch):
    """This process as a Ray driver of the cluster (its token in the environment, where Ray reads it),
    disconnected afterwards (Feast keeps its own flag)."""
    address, auth = ray_cluster
    for name, value in auth.items():
        monkeypatch.setenv(name, value)
    yield address
    import ray
    from feast.infra import ray_initializer

    ray.shutdown()
    ray_initializer._ray_initialized = False
    ray_initializer._ray_wrapper = None


def test_the_ray_engine_serves_exactly_what_the_local_engine_serves(base, ray_driver):
    on_ray = project(base, "ray_cluster", feast_engine="ray", ray_address=ray_driver)
    local = project(base, "ray_local")

    # the first month over the TTL window, then the next month incrementally (one Ray driver: its workers,
    # which import Feast once, serve both months)
    for month in (JAN, FEB):
        by_ray, by_local = materialize.materialize(on_ray, month), materialize.materialize(local, month)
        assert (by_ray.engine, by_local.engine) == ("ray", "local")
        assert by_ray.written == by_local.written and by_ray.removed == by_local.removed
        rows = online_rows(local)
        assert all(rows.values())
        assert online_rows(on_ray) == rows, f"{month}: the engines disagree"
        active = set(materialize.active_users(local, month))
        for view in FEATURE_MARTS:
            assert online_store.online_entities(on_ray, view) == active, view
        assert store.business_clock(on_ray, refresh=True) == ts(month)  # the run log moved with the month
        assert store.feast_clock(on_ray, refresh=True) == ts(month)
    assert by_ray.online_users[PUSH_VIEW] == 0
    assert sorted(materialize.materialize(on_ray, FEB).skipped) == sorted(FEATURE_MARTS)  # a rerun changes nothing
