"""The dbt docs site of the warehouse: generate the catalog, serve it on localhost."""

from __future__ import annotations

import json
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


def serve_docs(settings: Settings, port: int | None = None, host: str = "127.0.0.1") -> None:
    """`dbt docs serve` on localhost; blocks until interrupted."""
    res = invoke(settings, ["docs", "serve", "--port", str(port or settings.docs_port), "--host", host, "--no-browser"])
    if not res.success and res.exception is not None:
        raise DbtError(f"dbt docs serve failed: {_exception_text(res)}")
