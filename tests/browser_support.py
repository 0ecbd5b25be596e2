"""Headless Chromium for the tests that look at a web UI (Debian's `chromium` and `chromium-driver`, installed by
`make sysdeps`), driven by Selenium.

Every page a test looks at is kept as a screenshot (and its HTML) under ``test-artifacts/screenshots/`` of the
checkout (``STREAMFLOW_TEST_ARTIFACTS`` moves it), whether the test passed or not: CI uploads that folder.
The browser resolves no host name but the loopback address, so a page that reaches for a CDN fails here as it
would offline.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

ROOT = Path(__file__).resolve().parents[1]
PAGE_SECONDS = 60  # a page from navigation to the element a test waits for
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> tuple[str, str]:
    """The browser and its driver, or a failure saying how to install them."""
    binary = next((found for name in CHROMIUM if (found := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail(
            "the browser tests need Chromium and its driver: `make sysdeps` installs Debian's chromium and "
            "chromium-driver (as root), or install them with your package manager",
            pytrace=False,
        )
    return binary, driver


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("STREAMFLOW_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def keep_page(driver: WebDriver, name: str) -> Path:
    """Save the page the browser shows now as ``<name>.png`` (and ``.html``); returns the PNG's path."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    png = artifacts_dir() / f"{stem}.png"
    driver.save_screenshot(str(png))
    png.with_suffix(".html").write_text(driver.page_source)
    return png


@contextlib.contextmanager
def headless_chromium() -> Iterator[WebDriver]:
    binary, driver_path = chromium()
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
    finally:
        driver.quit()
