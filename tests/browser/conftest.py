"""Fixtures of the browser tests: headless Chromium (Debian's `chromium` and `chromium-driver`, installed by
`make sysdeps`) driven by Selenium, against real services started here on loopback ports.

One private platform for the whole package (tests/serving_world.py: a copy of the session's built warehouse on
its own PostgreSQL, Feast applied and materialized, a champion trained and promoted through MLflow), and on it
`streamflow serve`, `streamflow mlflow` and `streamflow docs`, each a real process started as a user starts it.

The browser resolves no host name but the loopback address, so a page that reaches for a CDN fails here as it
would offline. Every test leaves a screenshot of the page it ends on (and its HTML) under
test-artifacts/screenshots/ (tests/browser_support.py), which CI keeps.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from streamflow.core.settings import Settings
from tests.browser_support import chromium, headless_chromium, keep_page
from tests.conftest import ROOT, STREAMFLOW, free_port, server_home, settings_env
from tests.serving_world import api_server, clone_world, users_by_history

START_SECONDS = 180  # a UI process from start to its first answer (MLflow's server, dbt docs generate)


@dataclass
class Platform:
    settings: Settings
    api: str  # base URLs on 127.0.0.1
    mlflow: str
    docs: str
    active_user: str  # a subscriber served by the API
    logs: Path


def _wait_http(url: str, proc: subprocess.Popen, log: Path, seconds: float = START_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds:.0f} s:\n{log.read_text(errors='replace')[-4000:]}")


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A `streamflow` command in its own process group, stopped with its children when the block ends."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [STREAMFLOW, *args], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def platform(world_template, tmp_path_factory) -> Iterator[Platform]:
    """The API, the MLflow UI and the dbt docs site of one platform, all on loopback."""
    chromium()  # fail before minutes of set-up when the browser is missing
    tmp = tmp_path_factory.mktemp("browser")
    with server_home("streamflow-browser-") as home:
        settings = clone_world(world_template, home)
        active, _leavers = users_by_history(settings)
        mlflow_port, docs_port = free_port(), free_port()
        # dbt docs generate writes its own target folder, not the shared one of the session's warehouse
        docs_env = settings_env(settings.model_copy(update={"dbt_target_path": tmp / "docs_target"}))
        with (
            _process(["mlflow", "--port", str(mlflow_port)], settings_env(settings), tmp / "mlflow.log") as mlflow,
            _process(["docs", "--port", str(docs_port)], docs_env, tmp / "docs.log") as docs,
            api_server(settings, tmp / "api.log") as (api_url, _api),
        ):
            mlflow_url, docs_url = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{docs_port}"
            _wait_http(f"{mlflow_url}/health", mlflow, tmp / "mlflow.log")
            _wait_http(f"{docs_url}/catalog.json", docs, tmp / "docs.log")
            yield Platform(settings, api_url, mlflow_url, docs_url, active[0], tmp)


@pytest.fixture()
def browser(request) -> Iterator[WebDriver]:
    """Headless Chromium for one test; the page it ends on is kept under test-artifacts/screenshots/."""
    with headless_chromium() as driver:
        try:
            yield driver
        finally:
            shot = keep_page(driver, request.node.name)
            print(f"screenshot: {shot} (and .html)")
