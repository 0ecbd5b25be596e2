"""The interactive API docs, Swagger UI at ``/docs`` and ReDoc at ``/redoc``, served whole by the app itself.

FastAPI's default pages load their JavaScript, CSS, favicon and fonts from a CDN, so they are blank on a
machine without internet access. Here the assets come from the pinned ``fastapi-offline`` wheel (Swagger UI 5
and ReDoc 2 bundles) through a static mount of the app, and the pages reference nothing but the app's own
origin: no CDN, no Google Fonts, no online validator badge. A Content-Security-Policy keeps the browser on that
origin too (ReDoc's bundle hard-codes a remote logo image, which is then simply not shown).
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from streamflow.core.errors import StreamflowError

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"  # swagger-ui-bundle.js, swagger-ui.css, redoc...
SWAGGER_PARAMETERS = {"validatorUrl": None}  # Swagger UI would call validator.swagger.io for its badge
# the pages' own inline start-up script and styles; images, workers and fonts from the app or made in the page
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; worker-src 'self' blob:; font-src 'self' data:; frame-ancestors 'self'"
)


def _same_origin_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CSP
    return page


def add_docs(app: FastAPI) -> None:
    """Mount the docs' assets and add ``/docs`` (with its OAuth2 redirect page) and ``/redoc`` to ``app``,
    which must be built with ``docs_url=None, redoc_url=None``. Paths honour the ASGI ``root_path`` (a proxy
    serving the API under a prefix)."""
    if not (ASSETS_DIR / "swagger-ui-bundle.js").is_file():
        raise StreamflowError(f"the API docs' assets are missing from {ASSETS_DIR}", hint="make venv")
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    redirect_url = app.swagger_ui_oauth2_redirect_url or f"{DOCS_URL}/oauth2-redirect"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{redirect_url}",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), **SWAGGER_PARAMETERS},
        )
        return _same_origin_only(page)

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        return _same_origin_only(page)
