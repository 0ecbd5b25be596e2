"""The dbt docs site in a real browser (`streamflow docs`): the project tree lists every mart, and a mart's page
shows its columns from the catalog of the built warehouse and its lineage (what it depends on)."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from streamflow.core.names import MARTS
from tests.browser_support import PAGE_SECONDS

pytestmark = pytest.mark.browser


def _open_folder(browser, name: str) -> None:
    folders = browser.find_elements(By.XPATH, f"//a[contains(@class,'menu-tree') and normalize-space(.)='{name}']")
    next(f for f in folders if f.is_displayed()).click()


def _shown_models(browser) -> set[str]:
    nodes = browser.find_elements(By.CSS_SELECTOR, "a.menu-node[data-nav-unique-id^='model.streamflow.']")
    return {n.get_attribute("title") for n in nodes if n.is_displayed()}


def test_the_project_tree_lists_the_marts_and_a_mart_shows_its_columns(platform, browser):
    wait = WebDriverWait(browser, PAGE_SECONDS)
    browser.get(f"{platform.docs}/#!/overview")
    wait.until(lambda b: "StreamFlow warehouse" in b.find_element(By.TAG_NAME, "body").text)
    for folder in ("streamflow", "models", "marts"):
        _open_folder(browser, folder)
    wait.until(lambda b: set(MARTS) <= _shown_models(b))

    browser.find_element(By.CSS_SELECTOR, "a.menu-node[title='subscriptions_profile']").click()
    wait.until(lambda b: "model.streamflow.subscriptions_profile" in b.current_url)
    wait.until(lambda b: "contract_type" in b.find_element(By.TAG_NAME, "body").text)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "monthly_fee" in body and "as_of" in body
    # its lineage: the page's "Depends On" lists the snapshots it is built from, and its "Referenced By" the
    # exposures that read it (the Feast feature services, the model)
    wait.until(lambda b: "Depends On" in b.find_element(By.TAG_NAME, "body").text)
    body = browser.find_element(By.TAG_NAME, "body").text
    assert {"snap_subscriptions", "snap_users"} <= set(body.split()), body[-3000:]
