"""`streamflow features apply | materialize | get | active` and `streamflow dataset`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from streamflow.cli.console import RichProgress, cell_text, console, err_console, fail
from streamflow.cli.options import month_option
from streamflow.core.names import ALL_SERVICE, MODEL_SERVICE
from streamflow.core.settings import get_settings

# ---------------------------------------------------------------------------------------
# the feature store: features apply / materialize / get, dataset
# ---------------------------------------------------------------------------------------
features_app = typer.Typer(
    help="The feature store (Feast on the dbt marts): register the repo, load months online, read a user's "
    "online features.",
    no_args_is_help=True,
)


@features_app.command("apply")
def features_apply_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print one machine-readable object."),
) -> None:
    """Register feature_repo/ (entities, sources, feature views, services) in the SQL registry and create the
    online tables and the push source's table. Idempotent: a rerun changes nothing.

    Feature names and types come from the dbt contracts of the marts (target/manifest.json); run
    `streamflow build` first.
    """
    from streamflow.features.apply import apply

    with RichProgress() as progress:
        result = apply(get_settings(), progress=progress)
    if as_json:
        print(
            json.dumps(
                {
                    "project": result.project,
                    "changes": result.changes,
                    "objects": result.objects,
                    "online_store": result.online_store,
                    "seconds": round(result.seconds, 2),
                }
            )
        )
        return
    table = Table(title=f"Feast project {result.project} (online store: {result.online_store})", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for kind, names in result.objects.items():
        table.add_row(kind, ", ".join(names))
    console.print(table)
    if result.unchanged:
        console.print("registry unchanged (already applied)")
    else:
        for change in result.changes:
            console.print(f"  {change}", highlight=False)
    console.print(f"{result.seconds:.1f} s", style="dim")


@features_app.command("materialize")
def features_materialize_cmd(
    as_of: str = typer.Option(
        None,
        "--as-of",
        callback=month_option,
        show_default=False,
        help="Month to load (YYYY-MM-DD, a built month end). Default: the newest built month.",
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Rewrite the month even if it is already online (after the month was re-ingested and rebuilt).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one machine-readable object."),
) -> None:
    """Load one month of the marts into the online store, incrementally; then remove every user who is not
    active at that month, so only current subscribers are served.

    Rerunning a month that is already online changes nothing. Pushed real-time usage is kept.
    """
    from streamflow.features.materialize import materialize

    settings = get_settings()
    with RichProgress() as progress:
        progress.start("importing Feast")
        result = materialize(settings, as_of, force=force, progress=progress)  # None: newest built, under the lock
    if as_json:
        print(json.dumps(result.as_dict()))
        return
    table = Table(title=f"materialized {result.as_of} (online store: {settings.online_store}, engine: {result.engine})")
    for col in ("view", "users written", "users removed", "users online"):
        table.add_column(col, justify="left" if col == "view" else "right")
    for view, online in result.online_users.items():
        written = (
            "-"
            if view not in result.written
            else ("already online" if view in result.skipped else f"{result.written[view]:,}")
        )
        table.add_row(view, written, f"{result.removed.get(view, 0):,}", f"{online:,}")
    console.print(table)
    clock = result.business_clock.date().isoformat() if result.business_clock else "-"
    console.print(
        f"business clock: {clock}; {result.seconds:.1f} s"
        + (f", {result.rows_per_second:,.0f} users/s written" if result.rows_per_second else ""),
        highlight=False,
    )


@features_app.command("active")
def features_active_cmd(
    limit: int = typer.Option(5, "--limit", min=1, help="How many user ids to print."),
    as_json: bool = typer.Option(False, "--json", help="Print one machine-readable object."),
) -> None:
    """Print ids of users the API serves now: subscribers active at the business clock (the month the online
    store serves), one per line. Use one with `streamflow features get` or `/predict`."""
    from streamflow.features.materialize import active_users
    from streamflow.features.store import business_clock

    settings = get_settings()
    clock = business_clock(settings)
    if clock is None:
        fail("nothing is served yet: no month is materialized (run `streamflow features materialize`)")
    users = active_users(settings, clock.date())
    if as_json:
        print(json.dumps({"business_clock": clock.isoformat(), "active": len(users), "user_ids": users[:limit]}))
        return
    err_console.print(f"{len(users)} active subscribers at the business clock {clock.date()}; the first {limit}:")
    for user in users[:limit]:
        print(user)


@features_app.command("get")
def features_get_cmd(
    user_id: str = typer.Argument(..., help="A user id, e.g. 7590-VHVEG.", show_default=False),
    service: str = typer.Option(
        ALL_SERVICE,
        "--service",
        help=f"Feature service: {ALL_SERVICE} (everything) or {MODEL_SERVICE} (the model's inputs).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one machine-readable object."),
) -> None:
    """Print a user's online features with the as_of of each feature view: what the API serves, judged by
    the same read path and staleness rule.

    Exit status 1 when the API would not serve them: the user has no current features (not an active
    subscriber at the newest materialized month, or an unknown id: the API's 404) or a view is older than
    its TTL (the API's 409). Pushed real-time values past their TTL are served and marked stale.
    """
    from streamflow.drops.contract import ID_RE
    from streamflow.features.online import online_features

    if not ID_RE.match(user_id):
        fail(f"{user_id!r} is not a user id (4 digits, a dash, 5 capitals, e.g. 7590-VHVEG)")
    with err_console.status("reading online features ..."):
        result = online_features(get_settings(), user_id, service)
    clock = result.clock
    if not result.found:
        fail(
            f"user {user_id} has no current features online: not an active subscriber at {clock.date()} "
            f"(the newest materialized month), or an unknown id"
        )
    if result.verdict.stale:
        views = ", ".join(f"{v} (as_of {ts.date()})" for v, ts in result.verdict.stale.items())
        fail(f"the features of {user_id} are stale at {clock.date()}: {views}; the API refuses to score them")
    if as_json:
        print(
            json.dumps(
                {
                    "user_id": user_id,
                    "service": service,
                    "business_clock": clock.isoformat(),
                    "as_of": {v: ts.isoformat() if ts else None for v, ts in result.as_of.items()},
                    "stale_views": sorted(result.verdict.flagged),
                    "features": {
                        k: cell_text(v) if not isinstance(v, int | float | bool) else v
                        for k, v in result.values.items()
                    },
                }
            )
        )
        return
    console.print(f"[bold]{user_id}[/] · service {service} · business clock {clock.date()}", highlight=False)
    views = Table()
    views.add_column("view")
    views.add_column("as_of")
    for view, ts in result.as_of.items():
        views.add_row(view, cell_text(ts) + ("  (stale)" if view in result.verdict.flagged else ""))
    console.print(views)
    table = Table()
    for col in ("feature", "value", "view"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for name, value in result.values.items():
        table.add_row(name, cell_text(value), result.view_of[name])
    console.print(table)


def dataset_cmd(
    periods: str = typer.Option(
        ...,
        "--periods",
        show_default=False,
        help="Label periods, comma-separated (YYYY-MM-DD month ends), e.g. 2024-01-31,2024-02-29.",
    ),
    out: Path = typer.Option(..., "--out", show_default=False, help="Parquet file to write."),
    service: str = typer.Option(
        None,
        "--service",
        show_default=False,
        help="Feature service (default: STREAMFLOW_FEATURE_SERVICE, churn_model_v1).",
    ),
) -> None:
    """Write the training frame of label periods to Parquet: one row per user with a label for period P,
    the features as of P joined point-in-time by Feast, and churn_label. What training uses.
    """
    from streamflow.features.offline import training_frame

    parsed = []
    for text in periods.split(","):
        if text.strip():
            parsed.append(month_option(text))
    if not parsed:
        raise typer.BadParameter("give at least one period", param_hint="--periods")
    settings = get_settings()
    name = service or settings.feature_service

    with err_console.status("joining features point-in-time ..."):
        frame = training_frame(settings, parsed, service=name)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(out, index=False)
    except OSError as exc:
        fail(f"could not write {out}: {exc.strerror or exc}")
    table = Table(title=f"training frame ({name}) -> {out}")
    for col in ("period", "rows", "churners", "churn rate"):
        table.add_column(col, justify="left" if col == "period" else "right")
    for period, part in frame.groupby(frame["as_of"].dt.date, sort=True):
        n, pos = len(part), int(part["churn_label"].sum())
        table.add_row(period.isoformat(), f"{n:,}", f"{pos:,}", f"{pos / n:.1%}")
    console.print(table)
    console.print(f"{len(frame):,} rows, {len(frame.columns) - 3} features", highlight=False)
