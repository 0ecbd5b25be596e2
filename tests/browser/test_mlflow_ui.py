"""The MLflow UI in a real browser (`streamflow mlflow`): the registered model is listed, and its page shows the
version that carries the `champion` alias."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from ml.tracking import configure
from streamflow.core.names import CHAMPION, MODEL_NAME
from tests.browser_support import PAGE_SECONDS

pytestmark = pytest.mark.browser


def _body(browser) -> str:
    return browser.find_element(By.TAG_NAME, "body").text


def test_the_registered_model_shows_its_champion(platform, browser):
    champion = configure(platform.settings).get_model_version_by_alias(MODEL_NAME, CHAMPION)
    wait = WebDriverWait(browser, PAGE_SECONDS)

    browser.get(f"{platform.mlflow}/#/models")
    wait.until(lambda b: MODEL_NAME in _body(b))

    browser.get(f"{platform.mlflow}/#/models/{MODEL_NAME}")
    wait.until(lambda b: f"Version {champion.version}" in _body(b) and f"@ {CHAMPION}" in _body(b))
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "[role=row], tr") if f"@ {CHAMPION}" in r.text]
    assert rows and all(f"Version {champion.version}" in r for r in rows), rows
