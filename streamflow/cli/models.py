"""`streamflow train | promote | model show | drift | score | evaluate | mlflow`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from streamflow.cli.console import RichProgress, console, err_console
from streamflow.cli.options import month_option
from streamflow.core.names import CHALLENGER, CHAMPION, SHADOW
from streamflow.core.settings import get_settings

# ---------------------------------------------------------------------------------------
# models: train, promote, model show, drift, score, evaluate, mlflow
# ---------------------------------------------------------------------------------------
model_app = typer.Typer(help="The registered churn model: champion, challenger and shadow.", no_args_is_help=True)


def _ml_call(fn, *args, status: str = "working ...", **kwargs):
    """Run an ml.* entry point with a live line that names its current step."""
    with RichProgress() as progress:
        progress.start(status)
        return fn(*args, progress=progress, **kwargs)


def _metrics_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    from ml.metrics import METRICS

    table = Table(title=title)
    table.add_column("metric")
    for name in rows:
        table.add_column(name, justify="right")
    for metric in METRICS:
        if any(metric in r for r in rows.values()):
            table.add_row(metric, *[f"{r[metric]:.4f}" if metric in r else "-" for r in rows.values()])
    return table


def train_cmd(
    as_of: str = typer.Option(
        ...,
        "--as-of",
        callback=month_option,
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


def promote_cmd(as_json: bool = typer.Option(False, "--json", help="Print one machine-readable object.")) -> None:
    """Promote the challenger to `champion` when it passes the gate; otherwise keep the champion.

    Both are scored on the challenger's validation rows. A first champion needs ROC-AUC >= the floor
    (STREAMFLOW_PROMOTION_MIN_ROC_AUC); later ones must beat the champion by STREAMFLOW_PROMOTION_MARGIN
    ROC-AUC without losing more than STREAMFLOW_PROMOTION_LOGLOSS_TOLERANCE log-loss. With
    STREAMFLOW_PROMOTION_EVIDENCE=realized, the shadow must have beaten the champion on the realized
    labels of the last STREAMFLOW_PROMOTION_REALIZED_MONTHS months (marts.model_performance).
    """
    from ml.promote import promote

    settings = get_settings()
    result = _ml_call(lambda s, progress: promote(s), settings, status="scoring challenger and champion ...")
    if as_json:
        print(json.dumps(result.as_dict()))
        return
    verb = "[bold green]promote[/]" if result.decision.promote else "[bold yellow]keep[/]"
    console.print(
        f"decision: {verb} (challenger v{result.challenger_version}, champion "
        f"{'v' + result.champion_before if result.champion_before else 'none'}, "
        + (
            f"{result.validation_rows:,} labelled rows over the realized months)"
            if result.evidence == "realized"
            else f"{result.validation_rows:,} validation rows)"
        ),
        highlight=False,
    )
    for reason in result.decision.reasons:
        console.print(f"  - {reason}", highlight=False)
    console.print(f"champion: {'v' + result.champion_after if result.champion_after else 'none'}", highlight=False)


@model_app.command("show")
def model_show_cmd(as_json: bool = typer.Option(False, "--json", help="Print one machine-readable object.")) -> None:
    """Print the champion and the challenger with their validation metrics."""
    from ml.tracking import model_summary

    summary = _ml_call(lambda s, progress: model_summary(s), get_settings(), status="reading the registry ...")
    if as_json:
        print(json.dumps(summary))
        return
    console.print(f"model [bold]{summary['model']}[/] ({summary['tracking_uri']})", highlight=False)
    present = {alias: summary[alias] for alias in (CHAMPION, CHALLENGER, SHADOW) if summary.get(alias)}
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
    if CHAMPION not in present:
        console.print("no champion yet: `streamflow promote`")


@model_app.command("shadow")
def model_shadow_cmd(
    version: str = typer.Argument(None, show_default=False, help="The version to score in shadow."),
    clear: bool = typer.Option(False, "--clear", help="Remove the alias `shadow`."),
) -> None:
    """Score VERSION in shadow next to the champion (registry alias `shadow`), or stop with --clear.

    The API scores the shadow off the request path for the users it answers, and `streamflow score` for every
    active user; both write ml.shadow_scores. Without the alias, a challenger the gate did not promote is the shadow.
    """
    from ml.tracking import set_shadow

    if clear == (version is not None):
        raise typer.BadParameter("give a VERSION or --clear, not both", param_hint="VERSION")
    if version is not None and not version.isdigit():
        raise typer.BadParameter(f"a registry version number (1, 2, ...), not {version!r}", param_hint="VERSION")
    settings = get_settings()
    before = set_shadow(settings, version)
    was = f"v{before}" if before else "none"
    now = f"v{version}" if version else "none (a challenger that was not promoted is scored in shadow)"
    console.print(f"{settings.model_name} shadow: {now} (was {was})", highlight=False)


def drift_cmd(
    reference: str = typer.Option(
        ...,
        "--reference",
        callback=month_option,
        show_default=False,
        help="Reference month (YYYY-MM-DD), e.g. the month the champion was trained at.",
    ),
    current: str = typer.Option(
        ..., "--current", callback=month_option, show_default=False, help="Current month (YYYY-MM-DD)."
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


def score_cmd(
    as_of: str = typer.Option(
        ...,
        "--as-of",
        callback=month_option,
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
    if result.shadow_error:
        err_console.print(f"warning: the shadow was not scored: {result.shadow_error}", highlight=False)
    if result.shadow_version:
        console.print(
            f"shadow v{result.shadow_version}: {result.shadow_rows:,} rows in ml.shadow_scores (source batch)",
            highlight=False,
        )


def evaluate_cmd(
    as_of: str = typer.Option(
        ...,
        "--as-of",
        callback=month_option,
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


def mlflow_cmd(
    port: int = typer.Option(None, "--port", show_default=False, help="Port (default: STREAMFLOW_MLFLOW_PORT)."),
) -> None:
    """Serve the MLflow UI on localhost against the platform's tracking store and registry. Ctrl-C stops it."""
    import subprocess

    from ml.tracking import ui_server

    settings = get_settings()
    cmd, env, url = ui_server(settings, port or settings.mlflow_port)
    if cmd is None:
        console.print(f"MLflow is served by the configured tracking server: {url}", highlight=False)
        return
    err_console.print(f"MLflow UI on {url} (Ctrl-C stops it)", highlight=False)
    try:
        raise typer.Exit(subprocess.call(cmd, env=env))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
