"""`streamflow build`, `streamflow dbt ...` and `streamflow docs`: the dbt warehouse."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from streamflow.cli.console import RichProgress, console, err_console
from streamflow.cli.options import month_option
from streamflow.core.settings import get_settings


def build_cmd(
    as_of: str | None = typer.Option(
        None,
        "--as-of",
        callback=month_option,
        show_default=False,
        help="Build up to this drop month (YYYY-MM-DD, a loaded drop). Default: the newest loaded drop.",
    ),
    full_refresh: bool = typer.Option(
        False, "--full-refresh", help="Rebuild snapshots and marts from the whole raw history."
    ),
) -> None:
    """Run the quality gate, then build snapshots and marts for the drop months not built yet, in order.

    Every pending month passes the source tests first; on any failure nothing is changed, a report
    names the test, column, failing rows (up to five samples) and the drop file, and the exit status
    is 1. Warnings (gate rules on values no feature reads, such as an unseen ticket category, and
    source freshness) are shown with the same details, not fatal. After `streamflow ingest --rebuild`
    or a re-ingested month, snapshots and marts are rebuilt from the raw history.
    """
    from streamflow.warehouse.build import build, mart_row_counts

    settings = get_settings()
    with RichProgress() as progress:
        result = build(settings, as_of, full_refresh=full_refresh, progress=progress)
    for warning in result.warnings:
        err_console.print(Text("warning: ", style="bold yellow") + Text(warning))
    for report in result.gate_reports:
        for warned in report.warned:  # a gate rule of severity warn: shown with its rows, not fatal
            first, *details = warned.render().splitlines()
            line = f"quality gate, drop {report.as_of}: {first.removeprefix('! ')}"
            err_console.print(Text("warning: ", style="bold yellow") + Text(line), soft_wrap=True)
            for detail in details:
                err_console.print(Text(detail), soft_wrap=True)
    if result.up_to_date:
        console.print(f"nothing to build: {result.reason}", highlight=False)
        return
    counts = mart_row_counts(settings)
    # one column per month, one row per mart: fits a narrow terminal
    table = Table(title=f"built {len(result.months)} month(s)" + (" (full refresh)" if result.full_refresh else ""))
    table.add_column("rows")
    for month in result.months:
        table.add_column(month.isoformat(), justify="right")
    for mart in next(iter(counts.values()), {}):
        table.add_row(mart, *[f"{counts.get(m, {}).get(mart, 0):,}" for m in result.months])
    table.add_row("seconds", *[f"{result.month_seconds.get(m, 0):.1f}" for m in result.months])
    console.print(table)
    console.print(
        f"{result.reason}; {result.seconds:.1f} s in all (labels are counted by period_start)",
        style="dim",
        highlight=False,
    )


def dbt_cmd(ctx: typer.Context) -> None:
    """Run any dbt command on the warehouse, e.g. `streamflow dbt test --vars '{as_of: 2024-02-29}'`.

    dbt runs in this process with the platform's connection and paths (`streamflow stack env` prints
    the same environment for plain `dbt`). `streamflow dbt parse` writes target/manifest.json.
    """
    from streamflow.warehouse.runner import run

    raise typer.Exit(run(get_settings(), ctx.args))


def docs_cmd(
    port: int | None = typer.Option(
        None, "--port", help="Port on localhost (default: STREAMFLOW_DOCS_PORT, 8081).", show_default=False
    ),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve the site after generating it."),
) -> None:
    """Generate the dbt docs of the warehouse (models, columns, tests, lineage, exposures) and serve them.

    Open http://127.0.0.1:8081 (or --port); Ctrl-C stops the server.
    """
    from streamflow.warehouse.docs import generate_docs, serve_docs

    settings = get_settings()
    with err_console.status("dbt docs generate ..."):
        index = generate_docs(settings)
    console.print(f"docs written to {index.parent}", highlight=False)
    if serve:
        console.print(f"serving on http://127.0.0.1:{port or settings.docs_port} (Ctrl-C to stop)", highlight=False)
        serve_docs(settings, port)
