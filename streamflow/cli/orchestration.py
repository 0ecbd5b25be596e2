"""`streamflow run` (one DAG run through Airflow) and `streamflow airflow` (the local UI)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from streamflow.cli.console import RichProgress, console, fail
from streamflow.cli.options import month_option
from streamflow.core.settings import get_settings


# ---------------------------------------------------------------------------------------
# orchestration (Airflow)
# ---------------------------------------------------------------------------------------
def _print_dag_run(result, usage: dict) -> None:
    colors = {"success": "green", "failed": "red", "upstream_failed": "red", "skipped": "yellow"}
    table = Table(
        title=f"{result.dag_id}  run {result.run_id}",
        caption="peak MB: the task process's peak resident memory while the step ran (ops.step_runs)",
    )
    table.add_column("task")
    table.add_column("outcome")
    table.add_column("seconds", justify="right")
    table.add_column("peak MB", justify="right")
    for t in result.tasks:
        color = colors.get(t.state, "white")
        seconds = f"{t.seconds:.1f}" if t.seconds is not None else "-"
        peak = f"{usage[t.task_id][1].peak_rss_mb:.0f}" if t.task_id in usage else "-"
        table.add_row(t.task_id, f"[{color}]{t.state}[/]", seconds, peak)
    console.print(table)
    color = "green" if result.ok else "red"
    console.print(f"[{color}]{result.dag_id}: {result.state}[/]  (log: {result.log_file})")


def run_cmd(
    drop: Path = typer.Option(
        None, "--drop", help="A drop folder (month_NNN with manifest.json) to run the month for."
    ),
    as_of: str = typer.Option(
        None,
        "--as-of",
        callback=month_option,
        show_default=False,
        help="Retrain mode: the month (YYYY-MM-DD, a month end) to retrain and score for; with --layout "
        "aggregated: the month end of the --drop folder.",
    ),
    layout: str = typer.Option(
        "events",
        "--layout",
        help="events: --drop holds a manifest.json; aggregated: --drop is a month of pre-aggregated files, "
        "--as-of its month end.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the run and each task's outcome as one JSON object."),
) -> None:
    """Run `streamflow_monthly` for one drop through Airflow and print each task's outcome.

    The whole cycle: ingest, the dbt quality gate, snapshots and marts, Feast apply and materialize,
    train, promote, batch score and drift. With `--as-of` instead of `--drop`: retrain mode (train,
    promote and score that month only). A month of the aggregated layout: `--layout aggregated --drop DIR
    --as-of 2024-01-31`. Exit status 1 when the run failed (e.g. the gate refused the drop).
    """
    from streamflow.orchestration import MONTHLY_DAG, prepare_orchestration, run_dag

    if layout not in ("events", "aggregated"):
        fail(f"--layout must be events or aggregated, got {layout!r}")
    if layout == "aggregated":
        if drop is None or as_of is None or not drop.is_dir():
            fail("--layout aggregated runs one month folder and needs its month end: --drop DIR --as-of 2024-01-31")
        conf = {"drop": str(drop.resolve()), "as_of": as_of.isoformat(), "layout": layout, "mode": "monthly"}
    else:
        if (drop is None) == (as_of is None):
            fail("give exactly one of --drop DIR (a monthly run) or --as-of YYYY-MM-DD (retrain mode)")
        if drop is not None and not (drop / "manifest.json").is_file():
            fail(f"{drop} is not a drop folder: it has no manifest.json")
        monthly = drop is not None
        conf = {"drop": str(drop.resolve()), "mode": "monthly"} if monthly else {"as_of": str(as_of), "mode": "retrain"}
    settings = get_settings()
    with console.status("preparing Airflow (database, dbt manifest) ..."):
        prepare_orchestration(settings)
    with RichProgress() as progress:
        progress.start(f"{MONTHLY_DAG}: starting")
        result = run_dag(settings, MONTHLY_DAG, conf, progress=progress)
    from streamflow.core.runlog import step_usage

    usage = step_usage(settings, result.dag_id, result.run_id)
    if as_json:
        print(
            json.dumps(
                {
                    "dag_id": result.dag_id,
                    "run_id": result.run_id,
                    "state": result.state,
                    "log": str(result.log_file),
                    "tasks": {t.task_id: t.state for t in result.tasks},
                    "steps": {step: {"status": status, **u.as_dict()} for step, (status, u) in usage.items()},
                }
            )
        )
    else:
        _print_dag_run(result, usage)
    if not result.ok:
        raise typer.Exit(1)


def airflow_cmd() -> None:
    """Start the Airflow UI, scheduler, DAG processor and triggerer on localhost with the project's DAGs
    (Ctrl-C or `streamflow stop` stops them).

    The UI is at http://127.0.0.1:STREAMFLOW_AIRFLOW_PORT (default 8080), on loopback only, and no other
    component listens on the network. On the embedded stack it asks for a login: user `admin`, with a
    password generated once and kept (mode 0600) in .streamflow/airflow/simple_auth_manager_passwords.json;
    this command prints both. Metadata lives in the `airflow` database of the platform's PostgreSQL; each
    component's output goes to .streamflow/logs/airflow-<component>.log.
    """
    from streamflow.core.services import log_file
    from streamflow.orchestration import AIRFLOW_SERVICE, airflow_login, prepare_orchestration, run_airflow

    settings = get_settings()
    with console.status("preparing Airflow (database, dbt manifest) ..."):
        prepare_orchestration(settings)
    console.print(f"Airflow UI: http://127.0.0.1:{settings.airflow_port}  (Ctrl-C stops)", highlight=False)
    if settings.embedded:
        login = airflow_login(settings)
        console.print(
            f"login: {login.username} / {login.password}  (kept in {login.file}; delete it for a new one)",
            highlight=False,
            markup=False,
        )
    logs = log_file(settings, f"{AIRFLOW_SERVICE}-*")
    console.print(f"component logs: {logs}", highlight=False, markup=False)
    run_airflow(settings)
    console.print("Airflow stopped")
