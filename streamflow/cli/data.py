"""`streamflow generate` and `streamflow ingest`: monthly drops written and loaded."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from streamflow.cli.console import RichProgress, console, fail
from streamflow.core.settings import get_settings


# ---------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------
def generate_cmd(
    out: Path = typer.Option(
        ...,
        "--out",
        help="Folder to write month_000 ... and oracle/ into (created if missing; drops already there are replaced).",
        show_default=False,
    ),
    months: int = typer.Option(6, "--months", help="Number of monthly drops (1-1000)."),
    users: int = typer.Option(
        7043,
        "--users",
        help="Subscribers in month 0: 7043 = exactly the real customers, "
        "fewer = a seeded sample of them, more = all of them plus resampled look-alikes.",
    ),
    seed: int = typer.Option(42, "--seed", help="Random seed (>= 0). Same arguments, same bytes."),
    drift_at: int | None = typer.Option(
        None,
        "--drift-at",
        help="Inject drift from this month on (1 to months-1): less watch time, more rebuffering, fees up about 18%.",
        show_default=False,
    ),
    layout: str = typer.Option(
        "events",
        "--layout",
        help="events: monthly drops with a manifest; aggregated: the same months as pre-aggregated CSV folders "
        "(add_on_* and payment_method absent), for `streamflow ingest --layout aggregated`.",
    ),
) -> None:
    """Write monthly data drops (CSV + manifest.json) for a simulated streaming business.

    Month 0 holds the 7,043 real IBM Telco customers (or a sample, or more); their real churn outcomes are
    the labels in month_001. Later months simulate usage, payments, tickets, churners leaving and new
    sign-ups. Each user's true churn probability per month goes to OUT/oracle/ (never read by the pipeline).

    Example: `streamflow generate --out data/drops --months 6 --users 7043 --seed 42`, then
    `streamflow ingest data/drops/month_000`.
    """
    from streamflow.drops.generator.run import generate

    if layout not in ("events", "aggregated"):
        fail(f"--layout must be events or aggregated, got {layout!r}")
    if layout == "aggregated":
        import tempfile

        from streamflow.drops.generator.aggregated import write_history

        with tempfile.TemporaryDirectory() as tmp, RichProgress() as progress:
            # month k's labels are the outcomes the event history delivers with month k + 1
            generate(Path(tmp), months=months + 1, users=users, seed=seed, drift_at=drift_at, progress=progress)
            written = write_history(sorted(Path(tmp).glob("month_*")), months, out)
        for folder in written:
            print(folder)
        return
    try:
        with RichProgress() as progress:
            result = generate(out, months=months, users=users, seed=seed, drift_at=drift_at, progress=progress)
    except OSError as exc:
        fail(f"could not write drops to {out}: {exc.strerror or exc}")
    table = Table(title=f"drops written to {result.out}", box=None)
    for name in ("month", "as_of", "active", "new", "left", "churn", "sessions", "tickets"):
        table.add_column(name, justify="left" if name == "as_of" else "right")
    for m in result.months:
        rate = "-" if m.label_churn_rate is None else f"{m.label_churn_rate:.1%}"
        table.add_row(
            str(m.month),
            m.as_of.isoformat(),
            f"{m.subscribers:,}",
            f"{m.new_users:,}",
            f"{m.cancelled:,}",
            rate,
            f"{m.sessions:,}",
            f"{m.tickets:,}",
        )
    console.print(table)
    console.print(
        "active: subscribers at as_of; left: cancelled during the month; churn: labels.csv rate of the "
        "period that ended (the previous month's subscribers who left)",
        style="dim",
    )
    print(f"oracle: {result.oracle_dir}")


# ---------------------------------------------------------------------------------------
# ingest
# ---------------------------------------------------------------------------------------
def ingest_cmd(
    drops: list[Path] = typer.Argument(
        ...,
        help="Drop folders (month_000 ...), each with a manifest.json; with --layout aggregated, one month folder.",
        show_default=False,
    ),
    rebuild: bool = typer.Option(
        False,
        "--rebuild",
        help="Replace the loaded event drops with exactly these drops (in as_of order); months imported with "
        "--layout aggregated are kept (unless a drop of the same month replaces one, or --forget-aggregated). "
        "With --layout aggregated: load or replace that month in place, the others staying loaded.",
    ),
    forget_aggregated: bool = typer.Option(
        False,
        "--forget-aggregated",
        help="With --rebuild: drop the months imported with --layout aggregated too (the new history is exactly "
        "these drops).",
    ),
    layout: str = typer.Option(
        "events",
        "--layout",
        help="events: monthly drops with a manifest; aggregated: a month of pre-aggregated CSV files "
        "(users, subscriptions, usage_agg_30d, payments_agg_90d, support_agg_90d, labels), one per call, with --as-of.",
    ),
    as_of: str | None = typer.Option(
        None, "--as-of", help="With --layout aggregated: the month's end, YYYY-MM-DD.", show_default=False
    ),
) -> None:
    """Check drops and load them into raw.* (PostgreSQL COPY, one transaction, idempotent).

    Every file is checked against its manifest (sha256, row count), the contract (UTF-8, header, types,
    id format) before anything is loaded. Reloading a loaded drop changes nothing; a newer version of the
    newest month replaces it; an older month is refused unless --rebuild, which keeps the months imported
    with --layout aggregated (status `kept`) and replaces the event drops.

    `--layout aggregated --as-of 2024-01-31 DIR` loads one month of an earlier stack's pre-aggregated
    files (see the README, "Importing an aggregated history"), months in order, one per call; with --rebuild
    it loads or replaces that month in place, even before newer months, the other months staying loaded.
    """
    from streamflow.drops.ingest import ingest, ingest_aggregated

    if layout not in ("events", "aggregated"):
        fail(f"--layout must be events or aggregated, got {layout!r}")
    if layout == "aggregated":
        if as_of is None or len(drops) != 1 or forget_aggregated:
            fail(
                "--layout aggregated loads one month folder per call and needs its month end: "
                "streamflow ingest --layout aggregated --as-of 2024-01-31 DIR (with --rebuild it loads or replaces "
                "that month in place; `streamflow ingest --rebuild EVENT_DROPS` keeps the aggregated months)"
            )
        from streamflow.core.months import parse_month

        try:
            month_end = parse_month(as_of)
        except ValueError as exc:
            fail(f"--as-of: {exc}")
        with RichProgress() as progress:
            progress.start("checking")
            results = [ingest_aggregated(get_settings(), drops[0], month_end, progress=progress, replace=rebuild)]
    else:
        if as_of is not None:
            fail("--as-of is for --layout aggregated: an event drop names its month in its manifest.json")
        if forget_aggregated and not rebuild:
            fail("--forget-aggregated goes with --rebuild: streamflow ingest --rebuild --forget-aggregated DROP ...")
        with RichProgress() as progress:
            progress.start("checking")
            results = ingest(
                get_settings(), drops, rebuild=rebuild, progress=progress, forget_aggregated=forget_aggregated
            )
    _print_ingested(results, "ingested" + (" (history rebuilt)" if rebuild and layout == "events" else ""))


def _print_ingested(results, title: str) -> None:
    """One column per drop, one row per file: fits a narrow terminal."""
    table = Table(title=title)
    table.add_column("")
    for r in results:
        table.add_column(r.name, justify="right")
    table.add_row("as_of", *[r.as_of.isoformat() for r in results])
    table.add_row("status", *[r.status for r in results])
    files = list(dict.fromkeys(name for r in results for name in r.rows))  # a kept aggregated month has others
    for name in files:
        table.add_row(f"{name} rows", *[f"{r.rows[name]:,}" if name in r.rows else "-" for r in results])
    table.add_row("seconds", *[f"{r.seconds:.1f}" for r in results])
    console.print(table)
