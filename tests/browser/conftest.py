"""Fixtures of the browser tests: headless Chromium (Debian's `chromium` and `chromium-driver`, installed by
`make sysdeps`) driven by Selenium, against real services started here on loopback ports.

One private platform for the whole package (tests/serving_world.py: a copy of the session's built warehouse on
its own PostgreSQL, Feast applied and materialized, a champion trained and promoted through MLflow), and on it
`streamflow serve`, `streamflow mlflow` and `streamflow docs`, each a real process started as a user starts it.

The browser resolves no host name but the loopback address, so a page that reaches for a CDN fails here as it
would offline. A test that fails leaves a screenshot and the page's HTML in a temporary folder named in its
report.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from streamflow.core.settings import Settings
from tests.conftest import ROOT, STREAMFLOW, free_port, server_home, settings_env
from tests.serving_world import api_server, build_world, users_by_history

START_SECONDS = 180  # a UI process from start to its first answer (MLflow's server, dbt docs generate)
PAGE_SECONDS = 60  # a page from navigation to the element a test waits for
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


@dataclass
class Platform:
    settings: Settings
    api: str  # base URLs on 127.0.0.1
    mlflow: str
    docs: str
    active_user: str  # a subscriber served by the API
    logs: Path


def _chromium() -> tuple[str, str]:
    binary = next((found for name in CHROMIUM if (found := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail(
            "the browser tests need Chromium and its driver: `make sysdeps` installs Debian's chromium and "
            "chromium-driver (as root), or install them with your package manager",
            pytrace=False,
        )
    return binary, driver


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
def platform(built_warehouse, tmp_path_factory) -> Iterator[Platform]:
    """The API, the MLflow UI and the dbt docs site of one platform, all on loopback."""
    _chromium()  # fail before minutes of set-up when the browser is missing
    tmp = tmp_path_factory.mktemp("browser")
    with server_home("streamflow-browser-") as home:
        settings = build_world(home, built_warehouse, tmp)
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    item.stash.setdefault(_OUTCOMES, {})[report.when] = report
    return report


_OUTCOMES = pytest.StashKey[dict]()
_SHOTS: list[Path] = []


def _shots_dir() -> Path:
    if not _SHOTS:
        _SHOTS.append(Path(tempfile.mkdtemp(prefix="streamflow-browser-")))
    return _SHOTS[0]


@pytest.fixture()
def browser(request) -> Iterator[WebDriver]:
    """Headless Chromium for one test; on failure its screenshot and HTML go to a temporary folder."""
    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root, Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # offline: only loopback resolves
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for refused requests
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(PAGE_SECONDS)
    try:
        yield driver
        outcome = request.node.stash.get(_OUTCOMES, {}).get("call")
        if outcome is not None and outcome.failed:
            folder = _shots_dir()
            stem = request.node.name.replace("/", "_")
            driver.save_screenshot(str(folder / f"{stem}.png"))
            (folder / f"{stem}.html").write_text(driver.page_source)
            print(f"screenshot of the failed page: {folder / stem}.png (and .html)")
    finally:
        driver.quit()
