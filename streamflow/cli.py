"""The `streamflow` command line. Heavy libraries are imported inside commands, never at start-up."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from streamflow.core.settings import get_settings

app = typer.Typer(
    help="StreamFlow: churn prediction from monthly data drops (dbt, Feast, MLflow, FastAPI, Airflow).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)
stack_app = typer.Typer(
    help="The PostgreSQL server the platform uses (embedded unless STREAMFLOW_DATABASE_URL is set).",
    no_args_is_help=True,
)
app.add_typer(stack_app, name="stack")

console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int = 1) -> None:
    """Print a clear error (no traceback) and exit non-zero."""
    from rich.text import Text

    err_console.print(Text("error: ", style="bold red") + Text(message))
    raise typer.Exit(code)


# ---------------------------------------------------------------------------------------
# stack
# ---------------------------------------------------------------------------------------
def _print_status(st) -> None:
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
    print(f"url: {st.url or '-'}")


@stack_app.command("up")
def stack_up() -> None:
    """Start the embedded PostgreSQL (no-op when it is already up) and create the project's databases."""
    from streamflow.core.stack import StackError, get_stack

    try:
        with console.status("starting PostgreSQL ..."):
            st = get_stack(get_settings()).up()
    except StackError as exc:
        _fail(str(exc))
    _print_status(st)


@stack_app.command("down")
def stack_down() -> None:
    """Stop the embedded PostgreSQL. Data stays under .streamflow/."""
    from streamflow.core.stack import StackError, get_stack

    settings = get_settings()
    try:
        stopped = get_stack(settings).down()
    except StackError as exc:
        _fail(str(exc))
    if settings.embedded:
        console.print("stopped" if stopped else "was not running")
    else:
        console.print("external server (STREAMFLOW_DATABASE_URL): nothing to stop")


@stack_app.command("status")
def stack_status(as_json: bool = typer.Option(False, "--json", help="One machine-readable object.")) -> None:
    """Print the server's connection URL and health. Exit status 1 when it is not reachable."""
    from streamflow.core.stack import get_stack

    st = get_stack(get_settings()).status()
    if as_json:
        print(
            json.dumps(
                {
                    "mode": st.mode,
                    "running": st.running,
                    "url": st.url,
                    "pid": st.pid,
                    "version": st.version,
                    "databases": st.databases,
                    "message": st.message,
                }
            )
        )
    else:
        _print_status(st)
    if not st.running:
        raise typer.Exit(1)


@stack_app.command("env")
def stack_env() -> None:
    """Print `export` lines for plain dbt/psql use: `eval "$(streamflow stack env)"`."""
    from streamflow.core.env import tool_environment

    for key, value in tool_environment(get_settings()).items():
        print(f"export {key}='{value}'")


# ---------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------
@app.command("generate")
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
) -> None:
    """Write monthly data drops (CSV + manifest.json) for a simulated streaming business.

    Month 0 holds the 7,043 real IBM Telco customers (or a sample, or more); their real churn outcomes are
    the labels in month_001. Later months simulate usage, payments, tickets, churners leaving and new
    sign-ups. Each user's true churn probability per month goes to OUT/oracle/ (never read by the pipeline).

    Example: `streamflow generate --out data/drops --months 6 --users 7043 --seed 42`, then
    `streamflow ingest data/drops/month_000`.
    """
    from streamflow.drops.generator.params import GenerateError
    from streamflow.drops.generator.run import generate

    try:
        result = generate(out, months=months, users=users, seed=seed, drift_at=drift_at, progress=True)
    except GenerateError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"could not write drops to {out}: {exc.strerror or exc}")
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
@app.command("ingest")
def ingest_cmd(
    drops: list[Path] = typer.Argument(
        ..., help="Drop folders (month_000 ...), each with a manifest.json.", show_default=False
    ),
    rebuild: bool = typer.Option(
        False, "--rebuild", help="Replace the whole loaded history with exactly these drops (in as_of order)."
    ),
) -> None:
    """Check drops and load them into raw.* (PostgreSQL COPY, one transaction, idempotent).

    Every file is checked against its manifest (sha256, row count), the contract (UTF-8, header, types,
    id format) before anything is loaded. Reloading a loaded drop changes nothing; a newer version of the
    newest month replaces it; an older month is refused unless --rebuild.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from streamflow.core.stack import StackError
    from streamflow.drops.ingest import IngestError, ingest

    settings = get_settings()
    total = sum(p.stat().st_size for d in drops if d.is_dir() for p in d.glob("*.csv"))
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    try:
        with progress:
            task = progress.add_task("checking", total=total or None)

            def advance(desc: str, n: int) -> None:
                progress.update(task, advance=n, description=f"loading {desc}")

            results = ingest(settings, drops, rebuild=rebuild, progress=advance)
    except IngestError as exc:
        _fail(exc.render())
    except StackError as exc:
        _fail(str(exc))
    # one column per drop, one row per file: fits a narrow terminal
    table = Table(title="ingested" + (" (history rebuilt)" if rebuild else ""))
    table.add_column("")
    for r in results:
        table.add_column(r.name, justify="right")
    table.add_row("as_of", *[r.as_of.isoformat() for r in results])
    table.add_row("status", *[r.status for r in results])
    for name in results[0].rows:
        table.add_row(f"{name} rows", *[f"{r.rows[name]:,}" for r in results])
    table.add_row("seconds", *[f"{r.seconds:.1f}" for r in results])
    console.print(table)


# ---------------------------------------------------------------------------------------
# the dbt warehouse: build, dbt, docs
# ---------------------------------------------------------------------------------------
def _drop_date(value: str | None):
    """Typer callback: a drop's as_of, YYYY-MM-DD."""
    if value is None:
        return None
    from datetime import date

    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date in YYYY-MM-DD form") from None


@app.command("build")
def build_cmd(
    as_of: str | None = typer.Option(
        None,
        "--as-of",
        callback=_drop_date,
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
    is 1. Warnings (e.g. source freshness) are shown, not fatal. After `streamflow ingest --rebuild`
    or a re-ingested month, snapshots and marts are rebuilt from the raw history.
    """
    from rich.text import Text

    from streamflow.core.stack import StackError
    from streamflow.warehouse import build
    from streamflow.warehouse.build import mart_row_counts
    from streamflow.warehouse.gate import GateFailed
    from streamflow.warehouse.runner import DbtError

    settings = get_settings()
    try:
        result = build(settings, as_of, full_refresh=full_refresh, progress=True, console=err_console)
    except GateFailed as exc:
        err_console.print(Text("error: ", style="bold red") + Text(exc.report.render()), soft_wrap=True)
        raise typer.Exit(1) from None
    except (DbtError, StackError) as exc:
        _fail(str(exc))
    for warning in result.warnings:
        err_console.print(Text("warning: ", style="bold yellow") + Text(warning))
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


@app.command(
    "dbt",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def dbt_cmd(ctx: typer.Context) -> None:
    """Run any dbt command on the warehouse, e.g. `streamflow dbt test --vars '{as_of: 2024-02-29}'`.

    dbt runs in this process with the platform's connection and paths (`streamflow stack env` prints
    the same environment for plain `dbt`). `streamflow dbt parse` writes target/manifest.json.
    """
    from streamflow.core.stack import StackError
    from streamflow.warehouse.runner import DbtError, run

    try:
        code = run(get_settings(), ctx.args)
    except (DbtError, StackError) as exc:
        _fail(str(exc))
    raise typer.Exit(code)


@app.command("docs")
def docs_cmd(
    port: int | None = typer.Option(
        None, "--port", help="Port on localhost (default: STREAMFLOW_DOCS_PORT, 8081).", show_default=False
    ),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve the site after generating it."),
) -> None:
    """Generate the dbt docs of the warehouse (models, columns, tests, lineage, exposures) and serve them.

    Open http://127.0.0.1:8081 (or --port); Ctrl-C stops the server.
    """
    from streamflow.core.stack import StackError
    from streamflow.warehouse.docs import generate_docs, serve_docs
    from streamflow.warehouse.runner import DbtError

    settings = get_settings()
    try:
        with err_console.status("dbt docs generate ..."):
            index = generate_docs(settings)
        console.print(f"docs written to {index.parent}", highlight=False)
        if serve:
            console.print(f"serving on http://127.0.0.1:{port or settings.docs_port} (Ctrl-C to stop)", highlight=False)
            serve_docs(settings, port)
    except (DbtError, StackError) as exc:
        _fail(str(exc))


# ---------------------------------------------------------------------------------------
# models: train, promote, model show, drift, score, evaluate, mlflow
# ---------------------------------------------------------------------------------------
model_app = typer.Typer(help="The registered churn model: champion and challenger.", no_args_is_help=True)
app.add_typer(model_app, name="model")


def _month(value: str | None):
    """Typer callback: an as_of date (YYYY-MM-DD, a month's last day; YYYY-MM also accepted)."""
    if value is None:
        return None
    from ml.dataset import parse_as_of

    try:
        return parse_as_of(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _ml_call(fn, *args, status: str = "working ...", **kwargs):
    """Run an ml.* entry point with a progress line; user-facing errors become a clear message."""
    from ml.errors import MLError
    from streamflow.core.stack import StackError

    try:
        with err_console.status(status) as live:
            return fn(*args, on_step=lambda msg: live.update(msg + " ..."), **kwargs)
    except (MLError, StackError) as exc:
        _fail(str(exc))


def _metrics_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    from ml.evaluate import METRICS

    table = Table(title=title)
    table.add_column("metric")
    for name in rows:
        table.add_column(name, justify="right")
    for metric in METRICS:
        if any(metric in r for r in rows.values()):
            table.add_row(metric, *[f"{r[metric]:.4f}" if metric in r else "-" for r in rows.values()])
    return table


@app.command("train")
def train_cmd(
    as_of: str = typer.Option(
        ...,
        "--as-of",
        callback=_month,
        show_default=False,
        help="The run's month (YYYY-MM-DD, a month end): trains on every labelled period before it.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one machine-readable object."),
) -> None:
    """Train the model families on the labelled periods before --as-of and register the best as `challenger`.

    Features come point-in-time from the feature store. Validation is the latest labelled period when
    there are two or more, else a stratified split. Everything is logged to MLflow (`streamflow mlflow`).
    """
    from ml.train import train

    result = _ml_call(train, get_settings(), as_of, status="training ...")
    if as_json:
        print(json.dumps(result.as_dict(), default=str))
        return
    rows = {name + (" (chosen)" if name == result.family else ""): m for name, m in result.candidates.items()}
    console.print(
        _metrics_table(
            f"validation ({result.lineage['validation_strategy'].replace('_', '-')}, "
            f"{result.lineage['rows']['validation']:,} rows)",
            rows,
        )
    )
    lin = result.lineage
    console.print(
        f"registered [bold]{result.model_name}[/] version [bold]{result.model_version}[/] as [bold]challenger[/] "
        f"(run {result.run_id})\n"
        f"label periods {', '.join(lin['label_periods'])}; train rows {lin['rows']['train']:,}; "
        f"training frame sha256 {lin['training_frame_sha256'][:12]}; commit {lin['git_commit'][:12]}\n"
        f"train {result.timings['train_seconds']:.1f} s, "
        f"log and register {result.timings['log_register_seconds']:.1f} s; next: `streamflow promote`",
        highlight=False,
    )


@app.command("promote")
def promote_cmd(as_json: bool = typer.Option(False, "--json", help="Print one machine-readable object.")) -> None:
    """Promote the challenger to `champion` when it passes the gate; otherwise keep the champion.

    Both are scored on the challenger's validation rows. A first champion needs ROC-AUC >= the floor
    (STREAMFLOW_PROMOTION_MIN_ROC_AUC); later ones must beat the champion by STREAMFLOW_PROMOTION_MARGIN
    ROC-AUC without losing more than STREAMFLOW_PROMOTION_LOGLOSS_TOLERANCE log-loss.
    """
    from ml.promote import promote

    settings = get_settings()
    result = _ml_call(lambda s, on_step: promote(s), settings, status="scoring challenger and champion ...")
    if as_json:
        print(json.dumps(result.as_dict()))
        return
    verb = "[bold green]promote[/]" if result.decision.promote else "[bold yellow]keep[/]"
    console.print(
        f"decision: {verb} (challenger v{result.challenger_version}, champion "
        f"{'v' + result.champion_before if result.champion_before else 'none'}, "
        f"{result.validation_rows:,} validation rows)",
        highlight=False,
    )
    for reason in result.decision.reasons:
        console.print(f"  - {reason}", highlight=False)
    console.print(f"champion: {'v' + result.champion_after if result.champion_after else 'none'}", highlight=False)


@model_app.command("show")
def model_show_cmd(as_json: bool = typer.Option(False, "--json", help="Print one machine-readable object.")) -> None:
    """Print the champion and the challenger with their validation metrics."""
    from ml.tracking import model_summary

    summary = _ml_call(lambda s, on_step: model_summary(s), get_settings(), status="reading the registry ...")
    if as_json:
        print(json.dumps(summary))
        return
    console.print(f"model [bold]{summary['model']}[/] ({summary['tracking_uri']})", highlight=False)
    present = {alias: summary[alias] for alias in ("champion", "challenger") if summary[alias]}
    if not present:
        console.print("no versions yet: `streamflow train --as-of M`, then `streamflow promote`")
        return
    info = Table(show_header=True)
    info.add_column("")
    for alias in present:
        info.add_column(alias, justify="right")
    for key in ("version", "as_of", "family", "created", "validation_rows"):
        info.add_row(key, *[str(v.get(key)) for v in present.values()])
    info.add_row("last gate decision", *[v["promotion"].get("decision", "-") for v in present.values()])
    console.print(info)
    console.print(
        _metrics_table(
            "validation metrics (each on its own validation rows)", {a: v["metrics"] for a, v in present.items()}
        )
    )
    if "champion" not in present:
        console.print("no champion yet: `streamflow promote`")


@app.command("drift")
def drift_cmd(
    reference: str = typer.Option(
        ...,
        "--reference",
        callback=_month,
        show_default=False,
        help="Reference month (YYYY-MM-DD), e.g. the month the champion was trained at.",
    ),
    current: str = typer.Option(
        ..., "--current", callback=_month, show_default=False, help="Current month (YYYY-MM-DD)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one machine-readable object."),
) -> None:
    """Data drift of the model's features between two months (Evidently) and the retrain decision.

    HTML and JSON reports go to .streamflow/reports/ and to MLflow. Retraining is advised when the share
    of drifted features reaches STREAMFLOW_DRIFT_SHARE_THRESHOLD.
    """
    from ml.drift import drift

    result = _ml_call(drift, get_settings(), reference, current, status="computing drift ...")
    if as_json:
        print(json.dumps(result.as_dict()))
        return
    table = Table(title=f"drift {result.reference} -> {result.current}")
    for col, justify in (
        ("feature", "left"),
        ("method", "left"),
        ("score", "right"),
        ("threshold", "right"),
        ("drifted", "left"),
    ):
        table.add_column(col, justify=justify)
    for c in sorted(result.columns, key=lambda c: (not c.drifted, c.column)):
        table.add_row(c.column, c.method, f"{c.score:.4f}", f"{c.threshold:.4f}", "[red]yes[/]" if c.drifted else "no")
    console.print(table)
    decision = "[bold red]retrain[/]" if result.retrain else "[bold green]no retrain[/]"
    console.print(
        f"drifted features: {result.drifted_count}/{len(result.features)} = {result.drifted_share:.2f} "
        f"(threshold {result.threshold:.2f}) -> {decision}",
        highlight=False,
    )
    console.print(f"report: {result.html_path}", highlight=False)


@app.command("score")
def score_cmd(
    as_of: str = typer.Option(
        ...,
        "--as-of",
        callback=_month,
        show_default=False,
        help="Month to score (YYYY-MM-DD): every user active at it.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one machine-readable object."),
) -> None:
    """Score every active user at --as-of with the champion into the warehouse table ml.churn_scores.

    Re-scoring a month replaces its rows. dbt exposes them as the mart `churn_predictions`.
    """
    from ml.score import score

    result = _ml_call(score, get_settings(), as_of, status="scoring ...")
    if as_json:
        print(json.dumps(result.as_dict()))
        return
    console.print(
        f"scored {result.rows:,} users at {result.as_of} with {result.model_name} v{result.model_version}: "
        f"{result.predicted_churners:,} predicted churners (threshold {result.threshold:.3f}); "
        f"{result.replaced_rows:,} previous rows replaced; {result.seconds:.1f} s",
        highlight=False,
    )


@app.command("evaluate")
def evaluate_cmd(
    as_of: str = typer.Option(
        ...,
        "--as-of",
        callback=_month,
        show_default=False,
        help="Evaluate on every labelled period before this month (YYYY-MM-DD).",
    ),
    oracle: Path = typer.Option(
        None,
        "--oracle",
        show_default=False,
        help="Folder written by `streamflow generate --out` (or its oracle/ subfolder). "
        "Default: STREAMFLOW_ORACLE_DIR, else .streamflow/drops.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one machine-readable object."),
) -> None:
    """The champion's ROC-AUC per labelled period next to the oracle's (the generator's true probabilities).

    The ratio says how close the model gets to the best possible ranking. The oracle files are read here
    and nowhere else.
    """
    from ml.evaluate import evaluate

    result = _ml_call(evaluate, get_settings(), as_of, oracle_dir=oracle, status="evaluating ...")
    if as_json:
        print(json.dumps(result.as_dict()))
        return
    table = Table(title=f"champion v{result.model_version} against the oracle")
    for col in ("period", "role", "rows", "churners", "model ROC-AUC", "oracle ROC-AUC", "ratio"):
        table.add_column(col, justify="left" if col in ("period", "role") else "right")
    for p in result.periods:
        table.add_row(
            p.period.isoformat(),
            p.role,
            f"{p.rows:,}",
            f"{p.churners:,}",
            f"{p.model_roc_auc:.4f}",
            f"{p.oracle_roc_auc:.4f}",
            f"{p.ratio:.3f}",
        )
    console.print(table)


@app.command("mlflow")
def mlflow_cmd(
    port: int = typer.Option(None, "--port", show_default=False, help="Port (default: STREAMFLOW_MLFLOW_PORT)."),
) -> None:
    """Serve the MLflow UI on localhost against the platform's tracking store and registry. Ctrl-C stops it."""
    import subprocess

    from ml.errors import MLError
    from ml.tracking import ui_server

    settings = get_settings()
    try:
        cmd, env, url = ui_server(settings, port or settings.mlflow_port)
    except MLError as exc:
        _fail(str(exc))
    if cmd is None:
        console.print(f"MLflow is served by the configured tracking server: {url}", highlight=False)
        return
    err_console.print(f"MLflow UI on {url} (Ctrl-C stops it)", highlight=False)
    try:
        raise typer.Exit(subprocess.call(cmd, env=env))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


# ---------------------------------------------------------------------------------------
# the feature store: features apply / materialize / get, dataset
# ---------------------------------------------------------------------------------------
features_app = typer.Typer(
    help="The feature store (Feast on the dbt marts): register the repo, load months online, read a user's "
    "online features.",
    no_args_is_help=True,
)
app.add_typer(features_app, name="features")


def _features_call(fn, *args, status: str = "working ...", **kwargs):
    """Run a streamflow.features entry point with a status line; user-facing errors become a clear message."""
    from streamflow.core.stack import StackError
    from streamflow.features.store import FeaturesError

    try:
        with err_console.status(status) as live:
            return fn(*args, on_step=lambda msg: live.update(msg + " ..."), **kwargs)
    except (FeaturesError, StackError) as exc:
        _fail(str(exc))


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

    result = _features_call(apply, get_settings(), status="applying the feature repo ...")
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
        callback=_month,
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streamflow.core.stack import StackError
    from streamflow.features.materialize import built_months, materialize
    from streamflow.features.store import FeaturesError

    settings = get_settings()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    try:
        with progress:
            task = progress.add_task("importing Feast", total=None)
            if as_of is None:
                months = built_months(settings)
                if not months:
                    raise FeaturesError("no month is built: run `streamflow ingest` and `streamflow build` first")
                as_of = months[-1]

            def report(what: str, done: int, total: int) -> None:
                progress.update(task, description=what, completed=done, total=total)

            result = materialize(settings, as_of, force=force, progress=report)
    except (FeaturesError, StackError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(result.as_dict()))
        return
    table = Table(title=f"materialized {result.as_of} (online store: {settings.online_store})")
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


def _cell_text(value) -> str:
    from datetime import datetime, time

    if value is None:
        return "-"
    if isinstance(value, datetime):  # month-end values sit at 00:00 UTC: show the date
        return value.date().isoformat() if value.time() == time(0) else value.isoformat(timespec="seconds")
    if isinstance(value, float):
        return str(round(value, 6))
    return str(value)


@features_app.command("get")
def features_get_cmd(
    user_id: str = typer.Argument(..., help="A user id, e.g. 7590-VHVEG.", show_default=False),
    service: str = typer.Option(
        "customer_360",
        "--service",
        help="Feature service: customer_360 (everything) or churn_model_v1 (the model's inputs).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one machine-readable object."),
) -> None:
    """Print a user's online features with the as_of of each feature view (what the API serves).

    Exit status 1 when the user has no current features (not an active subscriber at the newest
    materialized month, or an unknown id).
    """
    from streamflow.drops.contract import ID_RE
    from streamflow.features.online import online_features
    from streamflow.features.store import business_clock

    if not ID_RE.match(user_id):
        _fail(f"{user_id!r} is not a user id (4 digits, a dash, 5 capitals, e.g. 7590-VHVEG)")
    settings = get_settings()

    def read(settings, on_step):
        on_step("reading online features")
        return online_features(settings, user_id, service), business_clock(settings)

    result, clock = _features_call(read, settings, status="importing Feast ...")
    if not result.found:
        if clock is None:
            _fail("nothing is materialized yet: run `streamflow features materialize`")
        _fail(
            f"user {user_id} has no current features online: not an active subscriber at {clock.date()} "
            f"(the newest materialized month), or an unknown id"
        )
    if as_json:
        print(
            json.dumps(
                {
                    "user_id": user_id,
                    "service": service,
                    "business_clock": clock.isoformat() if clock else None,
                    "as_of": {v: ts.isoformat() if ts else None for v, ts in result.as_of.items()},
                    "features": {
                        k: _cell_text(v) if not isinstance(v, int | float | bool) else v
                        for k, v in result.values.items()
                    },
                }
            )
        )
        return
    console.print(
        f"[bold]{user_id}[/] · service {service} · business clock {clock.date() if clock else '-'}", highlight=False
    )
    views = Table()
    views.add_column("view")
    views.add_column("as_of")
    for view, ts in result.as_of.items():
        views.add_row(view, _cell_text(ts))
    console.print(views)
    table = Table()
    for col in ("feature", "value", "view"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for name, value in result.values.items():
        table.add_row(name, _cell_text(value), result.view_of[name])
    console.print(table)


@app.command("dataset")
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
            parsed.append(_month(text))
    if not parsed:
        raise typer.BadParameter("give at least one period", param_hint="--periods")
    settings = get_settings()
    name = service or settings.feature_service

    def run(settings, on_step):
        on_step("joining features point-in-time")
        return training_frame(settings, parsed, service=name)

    frame = _features_call(run, settings, status="importing Feast ...")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(out, index=False)
    except OSError as exc:
        _fail(f"could not write {out}: {exc.strerror or exc}")
    table = Table(title=f"training frame ({name}) -> {out}")
    for col in ("period", "rows", "churners", "churn rate"):
        table.add_column(col, justify="left" if col == "period" else "right")
    for period, part in frame.groupby(frame["as_of"].dt.date, sort=True):
        n, pos = len(part), int(part["churn_label"].sum())
        table.add_row(period.isoformat(), f"{n:,}", f"{pos:,}", f"{pos / n:.1%}")
    console.print(table)
    console.print(f"{len(frame):,} rows, {len(frame.columns) - 3} features", highlight=False)


# ---------------------------------------------------------------------------------------
# orchestration (Airflow)
# ---------------------------------------------------------------------------------------
def _print_dag_run(result) -> None:
    colors = {"success": "green", "failed": "red", "upstream_failed": "red", "skipped": "yellow"}
    table = Table(title=f"{result.dag_id}  run {result.run_id}")
    table.add_column("task")
    table.add_column("outcome")
    table.add_column("seconds", justify="right")
    for t in result.tasks:
        color = colors.get(t.state, "white")
        table.add_row(t.task_id, f"[{color}]{t.state}[/]", f"{t.seconds:.1f}" if t.seconds is not None else "-")
    console.print(table)
    color = "green" if result.ok else "red"
    console.print(f"[{color}]{result.dag_id}: {result.state}[/]  (log: {result.log_file})")


def prepare_orchestration(settings) -> None:
    """What a DAG run needs before Airflow parses the DAGs: the database up, Airflow's metadata
    database migrated, dbt packages installed and the manifest the DAGs are built from."""
    from streamflow.core.stack import get_stack
    from streamflow.orchestration import ensure_metadata_db
    from streamflow.warehouse import runner

    get_stack(settings).up()
    runner.parse(settings)
    ensure_metadata_db(settings)


@app.command("run")
def run_cmd(
    drop: Path = typer.Option(
        None, "--drop", help="A drop folder (month_NNN with manifest.json) to run the month for."
    ),
    as_of: str = typer.Option(None, "--as-of", help="Retrain mode: the month (YYYY-MM-DD) to retrain and score for."),
    as_json: bool = typer.Option(False, "--json", help="Print the run and each task's outcome as one JSON object."),
) -> None:
    """Run `streamflow_monthly` for one drop through Airflow and print each task's outcome.

    The whole cycle: ingest, the dbt quality gate, snapshots and marts, Feast apply and materialize,
    train, promote, batch score and drift. With `--as-of` instead of `--drop`: retrain mode (train,
    promote and score that month only). Exit status 1 when the run failed (e.g. the gate refused the drop).
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from streamflow.core.stack import StackError
    from streamflow.orchestration import MONTHLY_DAG, OrchestrationError, run_dag

    if (drop is None) == (as_of is None):
        _fail("give exactly one of --drop DIR (a monthly run) or --as-of YYYY-MM-DD (retrain mode)")
    if drop is not None and not (drop / "manifest.json").is_file():
        _fail(f"{drop} is not a drop folder: it has no manifest.json")
    conf = {"drop": str(drop.resolve()), "mode": "monthly"} if drop else {"as_of": as_of, "mode": "retrain"}
    settings = get_settings()
    try:
        with console.status("preparing Airflow (database, dbt manifest) ..."):
            prepare_orchestration(settings)
        progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console, transient=True
        )
        with progress:
            job = progress.add_task(f"{MONTHLY_DAG}: starting", total=None)
            result = run_dag(
                settings,
                MONTHLY_DAG,
                conf,
                on_task_done=lambda t: progress.update(job, description=f"{MONTHLY_DAG}: {t} done"),
            )
    except (OrchestrationError, StackError) as exc:
        _fail(str(exc))
    if as_json:
        print(
            json.dumps(
                {
                    "dag_id": result.dag_id,
                    "run_id": result.run_id,
                    "state": result.state,
                    "log": str(result.log_file),
                    "tasks": {t.task_id: t.state for t in result.tasks},
                }
            )
        )
    else:
        _print_dag_run(result)
    if not result.ok:
        raise typer.Exit(1)


@app.command("airflow")
def airflow_cmd() -> None:
    """Start the Airflow UI, scheduler and DAG processor on localhost with the project's DAGs (Ctrl-C stops).

    The UI is at http://localhost:STREAMFLOW_AIRFLOW_PORT (default 8080); this local installation needs no
    login. Metadata lives in the `airflow` database of the platform's PostgreSQL.
    """
    import subprocess

    from streamflow.core.stack import StackError
    from streamflow.orchestration import OrchestrationError, airflow_bin, airflow_environment

    settings = get_settings()
    try:
        with console.status("preparing Airflow (database, dbt manifest) ..."):
            prepare_orchestration(settings)
    except (OrchestrationError, StackError) as exc:
        _fail(str(exc))
    console.print(f"Airflow UI: http://localhost:{settings.airflow_port}  (Ctrl-C stops)")
    with contextlib.suppress(KeyboardInterrupt):
        subprocess.run([airflow_bin(), "standalone"], env=airflow_environment(settings), check=False)


# ---------------------------------------------------------------------------------------
# serving
# ---------------------------------------------------------------------------------------
@app.command("serve")
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
    STREAMFLOW_MODEL_POLL_SECONDS and swapped without a restart. Set STREAMFLOW_API_TOKEN to require a bearer
    token on /events and /admin routes.
    """
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one-row predictions: more threads only cost CPU
    from serving.app import example_request, serve

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
@app.command("demo")
def demo_cmd(
    months: int = typer.Option(4, "--months", help="Monthly drops to generate and run."),
    users: int = typer.Option(7043, "--users", help="Subscribers at month 0 (7,043 = the real Telco customers)."),
    seed: int = typer.Option(42, "--seed", help="Generator seed."),
    install_seconds: float = typer.Option(None, "--install-seconds", hidden=True),
) -> None:
    """The whole job end to end on the embedded stack: PostgreSQL, drops, one Airflow run per month
    (ingest, quality gate, dbt, Feast, train, promote, score, drift), the API and a real prediction.

    Rerunnable: drops, months already run and running services are reused. `streamflow stop` ends it all.
    """
    from streamflow.core.stack import StackError
    from streamflow.demo import DemoError, run_demo
    from streamflow.orchestration import OrchestrationError

    try:
        run_demo(get_settings(), console, months=months, users=users, seed=seed, install_seconds=install_seconds)
    except (DemoError, OrchestrationError, StackError) as exc:
        _fail(str(exc))


@app.command("stop")
def stop_cmd() -> None:
    """Stop everything running locally: the API, the MLflow and Airflow UIs, dbt docs, and the embedded
    PostgreSQL (its data stays under .streamflow/)."""
    from streamflow.core.services import stop_all
    from streamflow.core.stack import StackError, get_stack

    settings = get_settings()
    stopped = stop_all(settings)
    console.print("stopped: " + (", ".join(stopped) if stopped else "no background service was running"))
    try:
        if get_stack(settings).down():
            console.print("stopped: PostgreSQL")
    except StackError as exc:
        _fail(str(exc))


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
