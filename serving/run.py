"""Running the API: uvicorn workers on the app factory, and a ready-to-paste example request."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

import httpx
import uvicorn

from serving import schemas
from serving.deps import api_tokens
from serving.responses import JSON
from streamflow.core.settings import Settings
from streamflow.features.materialize import active_users

log = logging.getLogger("streamflow.serving")

FACTORY = "serving.app:app_from_settings"


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int,
    access_log: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the API with uvicorn (uvloop and httptools when installed) until interrupted. ``on_ready(base_url)``
    runs in a thread once /ready answers 200 (used to print an example request).

    The tokens are resolved here, before any worker starts: a missing admin token outside the embedded stack is an
    :class:`serving.deps.ApiTokenError` (one line, no traceback), and the embedded stack's generated token exists
    before the workers read it."""
    api_tokens(settings)
    if on_ready is not None:
        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        threading.Thread(target=_when_ready, args=(base, on_ready), name="ready-hook", daemon=True).start()
    uvicorn.run(
        FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        log_level="info",
        timeout_graceful_shutdown=10,
    )


def _when_ready(base: str, hook: Callable[[str], None], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                hook(base)
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    log.warning("the API did not become ready within %.0f s", timeout)


def example_request(settings: Settings, base: str) -> tuple[str, str]:
    """A ready-to-paste curl for /predict on an active subscriber, and the API's answer to it."""
    clock = httpx.get(f"{base}/ready", timeout=10).json().get("business_clock")
    users = active_users(settings, datetime.fromisoformat(clock.replace("Z", "+00:00")).date()) if clock else []
    user = users[0] if users else schemas.EXAMPLE_USER
    body = json.dumps({"user_id": user})
    headers = {"Content-Type": JSON}
    command = f"curl -s -X POST {base}/predict -H 'Content-Type: application/json' -d '{body}'"
    if settings.api_read_token:  # the command names the variable, never the token
        headers["Authorization"] = f"Bearer {settings.api_read_token.get_secret_value()}"
        command += ' -H "Authorization: Bearer $STREAMFLOW_API_READ_TOKEN"'
    answer = httpx.post(f"{base}/predict", content=body, headers=headers, timeout=30)
    return command, answer.text
