"""Shared fixtures: a real PostgreSQL server started once per test session, and helpers to run
the real `streamflow` command line against it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from streamflow.config import Settings
from streamflow.stack import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
STREAMFLOW = str(Path(sys.executable).with_name("streamflow"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_settings(home: Path, **overrides) -> Settings:
    """Settings for a test: explicit values only, never the developer's .env or environment."""
    values = dict(home=home, project_dir=ROOT, database_url=None, pg_port=free_port())
    values.update(overrides)
    return Settings(_env_file=None, **values)


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a `streamflow` subprocess needs to use exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMFLOW_")}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"STREAMFLOW_{name.upper()}"] = str(value)
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
            f"streamflow {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="session")
def pg_settings(tmp_path_factory) -> Settings:
    """Settings pointing at a real embedded PostgreSQL started for this test session."""
    home = tmp_path_factory.mktemp("streamflow_home")
    settings = make_settings(home)
    server = EmbeddedPostgres(settings)
    server.up()
    yield settings
    server.down()


@pytest.fixture(scope="session")
def pg_server(pg_settings) -> EmbeddedPostgres:
    return EmbeddedPostgres(pg_settings)
