"""Local Airflow as a new user starts it: `streamflow airflow` with a PATH that lacks the virtualenv.

It comes up, its REST API refuses a request without a token and a wrong password, accepts a token made
with the generated admin login and lists the project's DAGs, and its API listens on 127.0.0.1 only.
Bounded in time; every process it starts is stopped with its process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import time

import httpx
import psutil
import pytest

from streamflow.orchestration import MATERIALIZE_DAG, MONITOR_DAG, MONTHLY_DAG, airflow_password_file
from tests.conftest import ROOT, STREAMFLOW, free_port, settings_env

pytestmark = pytest.mark.integration

START_SECONDS = 150  # preparing (dbt parse, airflow db migrate) and starting the components


def _wait_for(check, seconds: float, proc: subprocess.Popen, log) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"streamflow airflow exited {proc.returncode}:\n{log.read_text()[-4000:]}"
        result = check()
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"timed out after {seconds:.0f} s:\n{log.read_text()[-4000:]}")


def _get(url: str, **kw) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5, **kw)
    except httpx.HTTPError:
        return None


def _listening(proc: subprocess.Popen, port: int) -> set[str]:
    """The addresses the process tree listens on for ``port``."""
    try:
        pids = {proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()
    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid in pids
    }


def _group(pgid: int) -> list[int]:
    """The live processes of a process group."""
    members = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                members.append(p.pid)
    return members


def _stop(proc: subprocess.Popen) -> None:
    """Stop `streamflow airflow` and everything it started (one process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: standalone stops its components
    deadline = time.monotonic() + 30
    while _group(proc.pid) and time.monotonic() < deadline:
        proc.poll()
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _group(proc.pid) and time.monotonic() < deadline:  # killed processes take a moment to go
        time.sleep(0.2)


def test_local_airflow_requires_the_generated_login_and_listens_on_loopback_only(pg_settings, tmp_path):
    port = free_port()
    settings = pg_settings.model_copy(update={"airflow_port": port})
    env = settings_env(
        settings,
        PATH="/usr/bin:/bin",  # a new user's shell: the virtualenv is not activated
        AIRFLOW__API__WORKERS="1",
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
    )
    log = tmp_path / "airflow.log"
    base = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [STREAMFLOW, "airflow"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            start_new_session=True,
        )
    try:
        health = lambda: (r := _get(f"{base}/api/v2/monitor/health")) is not None and r.status_code == 200  # noqa: E731
        _wait_for(health, START_SECONDS, proc, log)

        file = airflow_password_file(settings)
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        password = json.loads(file.read_text())["admin"]
        printed = log.read_text()
        assert f"admin / {password}" in printed  # `streamflow airflow` says how to log in
        assert printed.count(password) == 1  # and only there: Airflow itself does not echo it

        # no token, a made-up token, a wrong password: refused
        assert _get(f"{base}/api/v2/dags").status_code in (401, 403)
        assert _get(f"{base}/api/v2/dags", headers={"Authorization": "Bearer not-a-token"}).status_code in (401, 403)
        wrong = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": "admin"}, timeout=10)
        assert wrong.status_code == 401

        # the generated login gets a token that lists the project's DAGs (once the DAG processor has parsed them)
        answer = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=10)
        assert answer.status_code == 201, answer.text
        auth = {"Authorization": f"Bearer {answer.json()['access_token']}"}

        def dags():
            r = _get(f"{base}/api/v2/dags", headers=auth)
            assert r is not None and r.status_code == 200, r and r.text
            ids = {d["dag_id"] for d in r.json()["dags"]}
            return ids if {MONTHLY_DAG, MATERIALIZE_DAG, MONITOR_DAG} <= ids else None

        assert _wait_for(dags, 90, proc, log) >= {MONTHLY_DAG, MATERIALIZE_DAG, MONITOR_DAG}

        assert _listening(proc, port) == {"127.0.0.1"}  # the API: loopback only, not 0.0.0.0 or ::
    finally:
        _stop(proc)
    assert not _group(proc.pid)
    assert _get(f"{base}/api/v2/monitor/health") is None  # nothing answers any more
