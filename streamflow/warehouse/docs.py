"""The dbt warehouse from Python: dbt in-process with the platform's settings, the monthly build
behind its quality gate, and the gate's report.

`build(settings)` brings the warehouse up to the newest loaded drop: for every drop month not built
yet, in as_of order, it runs the source tests (the quality gate) and then the same dbt nodes an
analyst or Airflow runs for one month (`dbt build --vars '{"as_of": ...}'`). When an already built
month was re-ingested with other content or disappeared (`streamflow ingest --rebuild`), the
snapshots and marts are rebuilt from the raw history, month by month. Every month is gated before
anything is touched, so a bad drop leaves snapshots and marts exactly as they were.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from streamflow.core.settings import Settings

if TYPE_CHECKING:
    pass
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
