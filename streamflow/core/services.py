"""Long-running local services started in the background (the API, the MLflow UI, dbt docs, Airflow).

Each one has a pid file and a log under ``home``; starting a running service is a no-op, a stale pid
file is ignored, and `stop_all` ends them all. Used by `streamflow demo` and `streamflow stop`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from streamflow.core.settings import Settings


@dataclass(frozen=True)
class Service:
    name: str
    args: tuple[str, ...]  # arguments of the `streamflow` command line
    url: str  # where users open it
    health: str  # a URL that answers 200 once the service is up


def local_services(settings: Settings) -> dict[str, Service]:
    api = f"http://127.0.0.1:{settings.api_port}"
    return {
        "api": Service(
            "api", ("serve", "--host", "127.0.0.1", "--port", str(settings.api_port)), f"{api}/docs", f"{api}/health"
        ),
        "mlflow": Service(
            "mlflow",
            ("mlflow",),
            f"http://127.0.0.1:{settings.mlflow_port}",
            f"http://127.0.0.1:{settings.mlflow_port}/health",
        ),
        "docs": Service(
            "docs", ("docs",), f"http://127.0.0.1:{settings.docs_port}", f"http://127.0.0.1:{settings.docs_port}/"
        ),
        "airflow": Service(
            "airflow",
            ("airflow",),
            f"http://127.0.0.1:{settings.airflow_port}",
            f"http://127.0.0.1:{settings.airflow_port}/api/v2/monitor/health",
        ),
    }


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.home / "run" / f"{name}.pid"


def log_file(settings: Settings, name: str) -> Path:
    return settings.home / "logs" / f"{name}.log"


def running_pid(settings: Settings, name: str) -> int | None:
    """The pid of the service while the very process it started is alive, else None.

    The pid file holds the pid and the process's start time: a pid the system has since given to another
    process is not ours, and is never signalled."""
    try:
        recorded = json.loads(_pid_file(settings, name).read_text())
        pid, started = int(recorded["pid"]), float(recorded["started"])
        process = psutil.Process(pid)
        if abs(process.create_time() - started) > 1.0:
            return None
        return pid
    except (FileNotFoundError, ValueError, KeyError, TypeError, psutil.Error):
        return None


def _record_pid(settings: Settings, name: str, pid: int) -> None:
    started = psutil.Process(pid).create_time()
    _pid_file(settings, name).write_text(json.dumps({"pid": pid, "started": started}))


def answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URLs we built
            return resp.status == 200
    except OSError:
        return False


def start(settings: Settings, service: Service, env: dict[str, str], wait: float = 120.0) -> bool:
    """Start ``service`` in the background unless it already runs; wait until it answers.

    Returns True when it answers within ``wait`` seconds."""
    if running_pid(settings, service.name) is None:
        log = log_file(settings, service.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        _pid_file(settings, service.name).parent.mkdir(parents=True, exist_ok=True)
        streamflow = str(Path(sys.executable).with_name("streamflow"))
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [streamflow, *service.args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=str(settings.project_dir),
            )
        _record_pid(settings, service.name, proc.pid)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if answers(service.health):
            return True
        if running_pid(settings, service.name) is None:
            return False
        time.sleep(0.5)
    return False


def stop(settings: Settings, name: str, timeout: float = 20.0) -> bool:
    """Stop a background service (its whole process group). False when it was not running."""
    pid = running_pid(settings, name)
    _pid_file(settings, name).unlink(missing_ok=True)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    return True


def stop_all(settings: Settings) -> list[str]:
    """Stop every background service; returns the names that were running."""
    return [name for name in local_services(settings) if stop(settings, name)]
