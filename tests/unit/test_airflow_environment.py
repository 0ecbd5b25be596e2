"""The environment local Airflow runs in: the project's executables first, the UI on loopback only."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from streamflow.orchestration import airflow_environment
from tests.conftest import make_settings


def test_airflow_finds_the_projects_executables_whatever_the_callers_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # a new user's shell: the virtualenv is not activated
    env = airflow_environment(make_settings(tmp_path / "home"))
    first = env["PATH"].split(os.pathsep)[0]
    assert first == str(Path(sys.executable).parent)
    assert shutil.which("airflow", path=env["PATH"]) == str(Path(sys.executable).with_name("airflow"))
    assert env["PATH"].endswith("/usr/bin:/bin")


def test_the_local_airflow_ui_listens_on_loopback_only(tmp_path):
    env = airflow_environment(make_settings(tmp_path / "home"))
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
