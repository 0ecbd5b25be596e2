"""Background services: `stop` signals only the very process it started, never a pid reused since, and
ends every program a supervisor started, each in its own process group, even when the supervisor is gone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from streamflow.core import services
from tests.conftest import ROOT, make_settings


def test_a_pid_file_names_the_process_it_started_and_stop_ends_it(tmp_path):
    settings = make_settings(tmp_path / "home")
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        services._pid_file(settings, "api").parent.mkdir(parents=True)
        services._record_pid(settings, "api", proc.pid)
        assert services.running_pid(settings, "api") == proc.pid
        assert services.stop(settings, "api", timeout=10)
        assert proc.wait(timeout=10) != 0
        assert services.running_pid(settings, "api") is None
    finally:
        proc.kill()


def test_a_pid_reused_by_another_process_is_left_alone(tmp_path):
    settings = make_settings(tmp_path / "home")
    path = services._pid_file(settings, "api")
    path.parent.mkdir(parents=True)
    me = psutil.Process(os.getpid())
    # this very test process, under a start time that is not its own: as if its pid had been reused
    path.write_text(json.dumps({"pid": me.pid, "started": me.create_time() - 3600}))
    assert services.running_pid(settings, "api") is None
    assert services.stop(settings, "api") is False  # and we are still here
    path.write_text(str(me.pid))  # a pid file of unknown form is not trusted either
    assert services.running_pid(settings, "api") is None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for_file(path, seconds: float = 20.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.1)
    raise AssertionError(f"{path} was not written")


def test_a_program_that_stops_by_itself_stops_the_others_and_is_named(tmp_path):
    settings = make_settings(tmp_path / "home")
    pid_file = tmp_path / "sleeper.pid"
    programs = [
        services.Program("sleeper", ("sh", "-c", f"echo $$ > {pid_file}; exec sleep 60")),
        services.Program("quitter", ("sh", "-c", f"while [ ! -s {pid_file} ]; do sleep 0.1; done; exit 3")),
    ]
    with pytest.raises(services.ServiceError, match=r"quitter stopped by itself \(exit status 3\)") as err:
        services.supervise(settings, "pair", programs, dict(os.environ))
    assert "pair-quitter.log" in str(err.value)
    assert not _alive(int(pid_file.read_text()))
    assert services.running_pid(settings, "pair") is None  # its records are gone with it
    assert not services._programs_file(settings, "pair").exists()


def test_stop_ends_every_supervised_group_even_after_the_supervisor_was_killed(tmp_path):
    settings = make_settings(tmp_path / "home")
    pids = tmp_path / "pids"
    script = (
        "import os, sys\n"
        "from streamflow.core import services\n"
        "from tests.conftest import make_settings\n"
        f"settings = make_settings({str(settings.home)!r})\n"
        # a program whose group has two members: the shell and a background child
        f"program = services.Program('pair', ('sh', '-c', 'sleep 60 & echo $$ $! > {pids}; wait'))\n"
        "services.supervise(settings, 'svc', [program], dict(os.environ))\n"
    )
    supervisor = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True)
    try:
        members = [int(p) for p in _wait_for_file(pids).split()]
        assert services.running_pid(settings, "svc") == supervisor.pid
        assert os.getpgid(members[0]) != supervisor.pid  # the program has a process group of its own
        os.killpg(supervisor.pid, signal.SIGKILL)  # the supervisor dies without cleaning up
        supervisor.wait(timeout=10)
        assert all(_alive(p) for p in members)  # its program lives on, orphaned
        assert services.stop(settings, "svc", timeout=10)
        assert not any(_alive(p) for p in members)
        assert services.stop(settings, "svc") is False  # nothing left
    finally:
        supervisor.kill()
        for pid in _wait_for_file(pids).split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
