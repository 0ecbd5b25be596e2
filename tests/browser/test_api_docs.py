"""The API's interactive docs in a real browser, offline: Swagger UI lists every endpoint and runs /predict for an
active subscriber (Try it out, Execute, a 200 with the probability); ReDoc renders the same schema. Every asset the
pages load comes from the API itself."""

from __future__ import annotations

import json

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser_support import PAGE_SECONDS

pytestmark = pytest.mark.browser


def _fetched_elsewhere(browser, base: str) -> list[str]:
    """The URLs the page asked for anywhere but the API and the browser did not refuse under the page's
    Content-Security-Policy (blob: and data: URLs are made in the page itself)."""
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    refused = " ".join(e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"])
    return [u for u in urls if not u.startswith((base + "/", "blob:", "data:")) and u not in refused]


def test_swagger_ui_lists_the_endpoints_and_runs_a_prediction(platform, browser):
    wait = WebDriverWait(browser, PAGE_SECONDS)
    browser.get(f"{platform.api}/docs")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".opblock-summary")))
    shown = {e.get_attribute("data-path") for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    paths = set(httpx.get(f"{platform.api}/openapi.json", timeout=10).json()["paths"])
    assert shown == paths
    assert {"/predict", "/predict/batch", "/features/{user_id}", "/model", "/health", "/ready"} <= paths

    predict = browser.find_element(By.CSS_SELECTOR, ".opblock-post .opblock-summary-path[data-path='/predict']")
    block = predict.find_element(By.XPATH, "ancestor::div[contains(@class,'opblock ')]")
    predict.click()
    wait.until(lambda _: block.find_elements(By.CSS_SELECTOR, ".try-out__btn"))[0].click()
    body = wait.until(lambda _: block.find_elements(By.CSS_SELECTOR, "textarea.body-param__text"))[0]
    body.send_keys(Keys.CONTROL, "a")
    body.send_keys(Keys.DELETE)
    body.send_keys(json.dumps({"user_id": platform.active_user}))
    block.find_element(By.CSS_SELECTOR, "button.execute").click()

    live = ".live-responses-table tbody .response"
    status = wait.until(lambda _: block.find_elements(By.CSS_SELECTOR, f"{live} .response-col_status"))
    assert status[0].text.strip() == "200", status[0].text
    answer = block.find_element(By.CSS_SELECTOR, f"{live} .response-col_description pre").text
    prediction = json.loads(answer)
    assert prediction["user_id"] == platform.active_user
    assert 0.0 <= prediction["churn_probability"] <= 1.0
    assert not _fetched_elsewhere(browser, platform.api)


def test_redoc_renders_the_schema_from_the_apis_own_assets(platform, browser):
    browser.get(f"{platform.api}/redoc")
    WebDriverWait(browser, PAGE_SECONDS).until(lambda b: "/predict/batch" in b.find_element(By.TAG_NAME, "body").text)
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "StreamFlow prediction API" in text
    assert not _fetched_elsewhere(browser, platform.api)
