"""Background services: `stop` signals only the very process it started, never a pid reused since."""

from __future__ import annotations

import json
import os
import subprocess

import psutil

from streamflow.core import services
from tests.conftest import make_settings


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
