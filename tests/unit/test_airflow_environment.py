"""The environment local Airflow runs in: the project's executables first, the UI on loopback only, a login."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

from streamflow.orchestration import airflow_environment, airflow_login, airflow_password_file
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


def test_the_local_airflow_asks_for_a_login_with_a_password_generated_once_and_kept_private(tmp_path):
    settings = make_settings(tmp_path / "home")
    env = airflow_environment(settings)
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager")
    file = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    assert file == tmp_path / "home" / "airflow" / "simple_auth_manager_passwords.json"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    stored = json.loads(file.read_text())  # the format SimpleAuthManager reads: {user: password}
    assert list(stored) == ["admin"] and len(stored["admin"]) >= 20

    login = airflow_login(settings)
    assert (login.username, login.password, login.file) == ("admin", stored["admin"], file)
    airflow_environment(settings)
    assert json.loads(file.read_text()) == stored  # generated once: later starts keep it

    other = airflow_login(make_settings(tmp_path / "other"))
    assert other.password != login.password  # random, not a default


def test_a_damaged_password_file_is_replaced_and_a_loosened_mode_is_tightened(tmp_path):
    settings = make_settings(tmp_path / "home")
    file = airflow_password_file(settings)
    file.parent.mkdir(parents=True)
    file.write_text("")  # what Airflow leaves when it creates the file itself
    file.chmod(0o644)
    login = airflow_login(settings)
    assert json.loads(file.read_text()) == {"admin": login.password}
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    file.chmod(0o644)
    assert airflow_login(settings).password == login.password
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
