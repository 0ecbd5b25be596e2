"""`streamflow stack up | down | status | env` and `streamflow stop`."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from streamflow.cli.console import console
from streamflow.core.redact import MASK, redacted
from streamflow.core.settings import get_settings

stack_app = typer.Typer(
    help="The PostgreSQL server the platform uses (embedded unless STREAMFLOW_DATABASE_URL is set).",
    no_args_is_help=True,
)

SHOW_SECRETS = typer.Option(
    False,
    "--show-secrets",
    help="Print the database password (and `stack env`: the API's admin token) instead of ***: for `eval` or a "
    "tool that connects.",
)
# the variables of `stack env` that carry a secret, alone or inside a URL
_SECRET_VARIABLES = {"STREAMFLOW_PG_PASSWORD", "PGPASSWORD", "STREAMFLOW_API_TOKEN"}


# ---------------------------------------------------------------------------------------
# stack
# ---------------------------------------------------------------------------------------
def _print_status(st, show_secrets: bool = False) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("mode", st.mode)
    table.add_row("health", ("[green]" if st.running else "[red]") + st.message)
    if st.version:
        table.add_row("server", f"PostgreSQL {st.version}")
    if st.pid:
        table.add_row("pid", str(st.pid))
    if st.databases:
        table.add_row("databases", ", ".join(st.databases))
    if st.data_dir:
        table.add_row("data", str(st.data_dir))
    if st.log_file:
        table.add_row("log", str(st.log_file))
    console.print(table)
    # the URL on a line of its own, unwrapped, so it can be copied into psql or another tool
    print(f"url: {_url(st.url, show_secrets) or '-'}")


def _url(url: str | None, show_secrets: bool) -> str | None:
    return url if show_secrets else redacted(url)


@stack_app.command("up")
def stack_up() -> None:
    """Start the embedded PostgreSQL (no-op when it is already up) and create the project's databases."""
    from streamflow.core.stack import get_stack

    with console.status("starting PostgreSQL ..."):
        st = get_stack(get_settings()).up()
    _print_status(st)


@stack_app.command("down")
def stack_down() -> None:
    """Stop the embedded PostgreSQL. Data stays under .streamflow/."""
    from streamflow.core.stack import get_stack

    settings = get_settings()
    stopped = get_stack(settings).down()
    if settings.embedded:
        console.print("stopped" if stopped else "was not running")
    else:
        console.print("external server (STREAMFLOW_DATABASE_URL): nothing to stop")


@stack_app.command("status")
def stack_status(
    as_json: bool = typer.Option(False, "--json", help="One machine-readable object."),
    show_secrets: bool = SHOW_SECRETS,
) -> None:
    """Print the server's connection URL (password masked unless --show-secrets) and health. Exit status 1
    when it is not reachable."""
    from streamflow.core.stack import get_stack

    st = get_stack(get_settings()).status()
    if as_json:
        print(
            json.dumps(
                {
                    "mode": st.mode,
                    "running": st.running,
                    "url": _url(st.url, show_secrets),
                    "pid": st.pid,
                    "version": st.version,
                    "databases": st.databases,
                    "message": st.message,
                }
            )
        )
    else:
        _print_status(st, show_secrets)
    if not st.running:
        raise typer.Exit(1)


@stack_app.command("env")
def stack_env(show_secrets: bool = SHOW_SECRETS) -> None:
    """Print `export` lines for plain dbt/psql use and API clients: `eval "$(streamflow stack env --show-secrets)"`.

    STREAMFLOW_API_TOKEN is the API's admin token (/events, /admin/*): the one set, or on the embedded stack the
    one generated under .streamflow/secrets/api_token. Without --show-secrets the password and the token are
    printed as *** (safe in a CI log, not enough to connect)."""
    from streamflow.core.env import tool_environment
    from streamflow.core.stack import embedded_api_token

    settings = get_settings()
    env = tool_environment(settings)
    if settings.api_token:
        env["STREAMFLOW_API_TOKEN"] = settings.api_token.get_secret_value()
    elif settings.embedded:
        env["STREAMFLOW_API_TOKEN"] = embedded_api_token(settings)
    for key, value in env.items():
        if not show_secrets:
            value = MASK if key in _SECRET_VARIABLES and value else redacted(value)
        print(f"export {key}='{value}'")


def stop_cmd() -> None:
    """Stop everything running locally: the API, the MLflow and Airflow UIs, dbt docs, and the embedded
    PostgreSQL (its data stays under .streamflow/)."""
    from streamflow.core.services import stop_all
    from streamflow.core.stack import get_stack

    settings = get_settings()
    stopped = stop_all(settings)
    console.print("stopped: " + (", ".join(stopped) if stopped else "no background service was running"))
    if get_stack(settings).down():
        console.print("stopped: PostgreSQL")
