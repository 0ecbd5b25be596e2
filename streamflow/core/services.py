"""Long-running local services started in the background (the API, the MLflow UI, dbt docs, Airflow).

Each one has a pid file and a log under ``home``; starting a running service is a no-op, a stale pid
file is ignored, and `stop_all` ends them all. Used by `streamflow demo` and `streamflow stop`.

A service made of several programs (Airflow: API server, scheduler, DAG processor, triggerer) runs them
under `supervise`: each one a child in its own process group, recorded next to the service's pid file,
so that `stop` ends every group even when the supervising process itself is gone.
"""

from __future__ import annotations

import contextlib
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

from streamflow.core.errors import StreamflowError
from streamflow.core.settings import Settings

GRACE_SECONDS = 15.0  # how long a stopped process group gets to exit before it is killed


class ServiceError(StreamflowError):
    """A local service could not be started or one of its programs stopped by itself."""


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


def wait_answering(settings: Settings, started: list[Service], wait: float) -> dict[str, bool]:
    """Wait until each of ``started`` answers its health URL, at most ``wait`` seconds in all; {name: answers}.
    A service whose process ended is given up at once."""
    pending = {s.name: s for s in started}
    status = dict.fromkeys(pending, False)
    deadline = time.monotonic() + wait
    while pending and time.monotonic() < deadline:
        for name, service in list(pending.items()):
            if answers(service.health):
                status[name] = True
                del pending[name]
            elif running_pid(settings, name) is None:
                del pending[name]
        time.sleep(0.5)
    return status


def stop(settings: Settings, name: str, timeout: float = 20.0) -> bool:
    """Stop a background service: its whole process group, then the group of every program it supervises
    (see `supervise`), whether or not the supervising process is still alive. False when nothing ran."""
    pid = running_pid(settings, name)
    _pid_file(settings, name).unlink(missing_ok=True)
    stopped = False
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)  # a supervisor stops its programs' groups itself
            stopped = True
        if not _wait_gone({pid}, timeout):
            _kill_groups({pid})
    return _stop_recorded(settings, name, timeout) or stopped


def stop_all(settings: Settings) -> list[str]:
    """Stop every background service; returns the names that were running."""
    return [name for name in local_services(settings) if stop(settings, name)]


# ---------------------------------------------------------------------------------------
# a service made of several programs, each in its own process group
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Program:
    name: str
    argv: tuple[str, ...]


def _programs_file(settings: Settings, name: str) -> Path:
    return settings.home / "run" / f"{name}.programs.json"


def _write_programs(settings: Settings, name: str, records: list[dict]) -> None:
    path = _programs_file(settings, name)
    fresh = path.with_name(f".{path.name}.{os.getpid()}")
    fresh.write_text(json.dumps(records))
    os.replace(fresh, path)


def _live_groups(pgids: set[int]) -> set[int]:
    """The process groups among ``pgids`` that still have a live (not zombie) member."""
    live = set()
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            pgid = os.getpgid(process.pid)
            if pgid in pgids and process.info["status"] != psutil.STATUS_ZOMBIE:
                live.add(pgid)
    return live


def _wait_gone(pgids: set[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _live_groups(pgids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _kill_groups(pgids: set[int]) -> None:
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    _wait_gone(pgids, 5.0)


def _stop_groups(pgids: set[int], timeout: float = GRACE_SECONDS) -> None:
    """SIGTERM to every group, SIGKILL to the groups still alive after ``timeout`` seconds."""
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    if not _wait_gone(pgids, timeout):
        _kill_groups(pgids)


def _recorded_groups(settings: Settings, name: str) -> set[int]:
    """The process groups of the programs recorded for ``name`` that are still ours: the recorded leader
    alive with its recorded start time, or gone with members left behind (a pid is not given again while
    its group has members). A leader pid the system has since given to another process is left alone."""
    try:
        records = json.loads(_programs_file(settings, name).read_text())
        groups = {int(r["pid"]): float(r["started"]) for r in records}
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return set()
    ours = set()
    for pid, started in groups.items():
        try:
            if abs(psutil.Process(pid).create_time() - started) > 1.0:
                continue  # the pid now names another process
        except psutil.NoSuchProcess:
            pass
        ours.add(pid)
    return _live_groups(ours)


def _stop_recorded(settings: Settings, name: str, timeout: float) -> bool:
    groups = _recorded_groups(settings, name)
    if groups:
        _stop_groups(groups, timeout)
    _programs_file(settings, name).unlink(missing_ok=True)
    return bool(groups)


class _StopRequested(Exception):
    pass


def _raise_stop(signum, frame) -> None:
    raise _StopRequested


def supervise(settings: Settings, name: str, programs: list[Program], env: dict[str, str]) -> None:
    """Run ``programs`` as the service ``name`` until SIGINT or SIGTERM, or until one of them exits.

    Each program is a child in its own process group (a signal for this process never reaches them
    unasked, and stopping a program ends all it started), with its output in ``logs/<name>-<program>.log``.
    This process and the groups are recorded under ``home/run``, so `stop` ends them all, even after this
    process was killed. On the way out every group gets SIGTERM, then SIGKILL after ``GRACE_SECONDS``.
    Raises ServiceError when the service already runs or when a program stopped by itself."""
    other = running_pid(settings, name)
    if other is not None and other != os.getpid():
        raise ServiceError(f"{name} already runs (pid {other})", hint="streamflow stop")
    _pid_file(settings, name).parent.mkdir(parents=True, exist_ok=True)
    _stop_recorded(settings, name, GRACE_SECONDS)  # left over from a supervisor that was killed
    _record_pid(settings, name, os.getpid())
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    children: dict[str, subprocess.Popen] = {}
    try:
        for program in programs:
            children[program.name] = _spawn(settings, name, program, env)
            _write_programs(
                settings,
                name,
                [{"name": n, "pid": p.pid, "started": _started(p.pid)} for n, p in children.items()],
            )
        while True:
            for program, child in children.items():
                if child.poll() is not None:
                    raise ServiceError(
                        f"{name}: {program} stopped by itself (exit status {child.returncode}); "
                        f"the other programs were stopped. Its log: {log_file(settings, f'{name}-{program}')}"
                    )
            time.sleep(1.0)
    except _StopRequested:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            _stop_groups({child.pid for child in children.values()})
            for child in children.values():
                child.wait(timeout=5)
            _programs_file(settings, name).unlink(missing_ok=True)
            if running_pid(settings, name) == os.getpid():
                _pid_file(settings, name).unlink(missing_ok=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _started(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0  # gone already: the supervisor reports it at its next look


def _spawn(settings: Settings, name: str, program: Program, env: dict[str, str]) -> subprocess.Popen:
    log = log_file(settings, f"{name}-{program.name}")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(program.argv),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=str(settings.project_dir),
        )
