"""The dbt docs site of the warehouse: generate the catalog, serve it on localhost."""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from streamflow.core.settings import Settings
from streamflow.warehouse.runner import DbtError, _exception_text, dbt_vars, ensure_packages, invoke


# ---------------------------------------------------------------------------------------
# docs
# ---------------------------------------------------------------------------------------
def generate_docs(settings: Settings) -> Path:
    """`dbt docs generate`: target/index.html with the catalog of the built warehouse."""
    ensure_packages(settings)
    res = invoke(settings, ["docs", "generate", "--quiet", "--vars", json.dumps(dbt_vars(settings))])
    if not res.success:
        raise DbtError(f"dbt docs generate failed: {_exception_text(res)}")
    return settings.dbt_target_dir / "index.html"


SITE_FILES = ("manifest.json", "catalog.json")  # what dbt's docs page reads beside its index.html


def serve_docs(settings: Settings, port: int | None = None, host: str = "127.0.0.1") -> None:
    """Serve the generated docs on ``host`` (localhost) until interrupted: what `dbt docs serve` does, with the
    site's three files only (not the rest of target/) and an address that is free again at once after a stop
    (dbt's server does not set SO_REUSEADDR, so a restart right after a stop could not bind for a minute)."""
    from dbt.task.docs import DOCS_INDEX_FILE_PATH  # lazy: dbt takes a second to import

    site = settings.dbt_target_dir / "docs-site"
    site.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DOCS_INDEX_FILE_PATH, site / "index.html")
    for name in SITE_FILES:
        source = settings.dbt_target_dir / name
        if not source.exists():
            raise DbtError(f"{source} is missing: run `streamflow docs` (it generates the catalog) first")
        shutil.copyfile(source, site / name)
    handler = functools.partial(_QuietHandler, directory=str(site))
    port = port or settings.docs_port
    try:
        httpd = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise DbtError(
            f"cannot serve the docs on {host}:{port}: {exc.strerror or exc}",
            hint="stop what uses the port, or choose another with --port (or STREAMFLOW_DOCS_PORT)",
        ) from None
    with httpd, contextlib.suppress(KeyboardInterrupt):
        httpd.serve_forever()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass
