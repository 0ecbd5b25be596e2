"""The API's interactive docs work offline: /docs and /redoc reference only the app's own origin, and every
asset they load is served by the app with its content type."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from serving.app import create_app
from serving.model import ModelHolder
from streamflow.core.settings import Settings
from tests.serving_support import LocalModels, MemoryFeatures, serve_in_thread, serving_model

CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


class _References(HTMLParser):
    """Every URL a page loads by markup: script src, link href, img src."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and (name == "src" or (tag == "link" and name == "href")):
                self.urls.append(value)


@pytest.fixture(scope="module")
def api():
    models = ModelHolder(LocalModels({"1": serving_model("1")}, alias="1"), poll_seconds=3600)
    app = create_app(Settings(_env_file=None), MemoryFeatures(), models, ops_state=lambda: None)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_every_asset_from_the_app_itself(api, page):
    answer = api.get(page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    html = answer.text
    # no absolute URL anywhere in the page: no CDN, no fonts, no validator badge
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.IGNORECASE), html
    parser = _References()
    parser.feed(html)
    assets = [u for u in parser.urls if not u.startswith("data:")]
    assert any(u.endswith(".js") for u in assets), assets
    base = str(api.base_url)
    for asset in assets:
        url = urljoin(base + page, asset)
        assert urlsplit(url).netloc == urlsplit(base).netloc, asset
        loaded = api.get(url)
        assert loaded.status_code == 200, (asset, loaded.status_code)
        suffix = "." + asset.rsplit(".", 1)[-1]
        assert CONTENT_TYPES[suffix] in loaded.headers["content-type"], (asset, loaded.headers["content-type"])
        assert len(loaded.content) > 1000, asset  # the real bundle, not an error page
    assert "/openapi.json" in html and api.get("/openapi.json").status_code == 200
    # and the browser is told to stay on the app's origin
    policy = answer.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "img-src 'self' data: blob:" in policy


def test_swagger_ui_bundles_its_own_assets_and_no_online_validator(api):
    html = api.get("/docs").text
    assert "swagger-ui-bundle.js" in html and "swagger-ui.css" in html
    assert '"validatorUrl": null' in html
    assert api.get("/docs/oauth2-redirect").status_code == 200
    assert "redoc.standalone.js" in api.get("/redoc").text


def test_the_docs_pages_are_not_part_of_the_api_schema(api):
    paths = api.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]
