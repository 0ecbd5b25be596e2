"""`streamflow serve`: the prediction API."""

from __future__ import annotations

import typer

from streamflow.cli.console import console, err_console
from streamflow.core.settings import get_settings


# ---------------------------------------------------------------------------------------
# serving
# ---------------------------------------------------------------------------------------
def serve_cmd(
    host: str = typer.Option(
        None,
        "--host",
        show_default=False,
        help="Bind address (default: STREAMFLOW_API_HOST, 127.0.0.1; 0.0.0.0: every interface).",
    ),
    port: int = typer.Option(None, "--port", show_default=False, help="Port (default: STREAMFLOW_API_PORT, 8000)."),
    workers: int = typer.Option(
        None, "--workers", show_default=False, min=1, help="Worker processes (default: STREAMFLOW_API_WORKERS, 1)."
    ),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request (costs CPU per request)."),
    example: bool = typer.Option(
        False, "--example", help="Once ready, print a curl for /predict on an active subscriber and its answer."
    ),
) -> None:
    """Serve the prediction API: /predict, /predict/batch, /features/{user_id}, /events, /model, /health, /ready,
    /metrics; interactive docs at /docs. Ctrl-C stops it.

    Features are read online from Feast; the model is the registry's `champion`, checked every
    STREAMFLOW_MODEL_POLL_SECONDS and swapped without a restart.

    Tokens (Authorization: Bearer): /events and /admin/* take the admin token, STREAMFLOW_API_TOKEN (unset on the
    embedded stack: generated once into .streamflow/secrets/api_token, shown by `streamflow stack env
    --show-secrets`; unset with STREAMFLOW_DATABASE_URL: the API refuses to start). Set STREAMFLOW_API_READ_TOKEN
    to require a token on /predict, /predict/batch and /features too (the admin token also grants them).
    """
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one-row predictions: more threads only cost CPU
    from serving.run import example_request, serve

    settings = get_settings()
    host = host or settings.api_host
    port = port or settings.api_port

    def show_example(base: str) -> None:
        try:
            command, answer = example_request(settings, base)
        except Exception as exc:  # noqa: BLE001 - the example is a courtesy: the server keeps running
            err_console.print(f"could not run the example request: {exc}")
            return
        console.print(f"API ready on {base} (docs: {base}/docs). Try:", highlight=False)
        print(command, flush=True)
        print(answer, flush=True)

    serve(
        settings,
        host=host,
        port=port,
        workers=workers or settings.api_workers,
        access_log=access_log,
        on_ready=show_example if example else None,
    )


# ---------------------------------------------------------------------------------------
# the demo
# ---------------------------------------------------------------------------------------
