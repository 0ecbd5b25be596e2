"""`streamflow demo`: the whole job end to end on the embedded stack.

Starts PostgreSQL, generates monthly drops from the real Telco customers, runs `streamflow_monthly`
through Airflow for each month in order, starts the API and answers a real /predict, then says where
every UI is and how to stop. Rerunnable: a month already run successfully, drops already generated and
services already running are reused.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from streamflow.cli.console import RichProgress, console
from streamflow.core import months as business_months
from streamflow.core import services
from streamflow.core.db import connect
from streamflow.core.errors import StreamflowError
from streamflow.core.names import CHAMPION, MART_SCHEMA
from streamflow.core.runlog import step_usage
from streamflow.core.settings import Settings, get_settings
from streamflow.core.stack import get_stack
from streamflow.orchestration import (
    MONTHLY_DAG,
    airflow_environment,
    airflow_login,
    prepare_orchestration,
    run_dag,
)


class DemoError(StreamflowError):
    """A phase of the demo failed; the message says where to look."""


@dataclass
class Timings:
    phases: list[tuple[str, float, str]] = field(default_factory=list)  # (phase, seconds, note)
    steps: dict[date, dict] = field(default_factory=dict)  # month -> step -> (status, Usage), from the run log

    def add(self, name: str, seconds: float, note: str = "") -> None:
        self.phases.append((name, seconds, note))


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
    run_demo(get_settings(), console, months=months, users=users, seed=seed, install_seconds=install_seconds)


def run_demo(
    settings: Settings,
    console: Console,
    months: int = 4,
    users: int = 7043,
    seed: int = 42,
    install_seconds: float | None = None,
) -> None:
    """The whole job; raises DemoError with a pointer to the logs when a phase fails."""
    timings = Timings()
    if install_seconds is not None:
        timings.add("install", install_seconds, ".venv from uv.lock")
    _start_stack(settings, console, timings)
    t0 = time.perf_counter()
    drops, how = _drops(settings, months, users, seed)
    timings.add("generate", time.perf_counter() - t0, f"{how}: {months} months, {users:,} users at month 0")
    console.print(f"[green]drops {how}[/]  {drops[0].parent}")
    summaries = _run_months(settings, console, timings, drops)
    _print_month_table(console, summaries)
    _show_champion(settings, console, max(summaries), drops[0].parent)
    local = services.local_services(settings)
    _serve_and_predict(settings, console, timings, local)
    answering = _start_uis(settings, console, timings, local, airflow_environment(settings))
    _print_where_everything_is(settings, console, timings, local, answering)


def _start_stack(settings: Settings, console: Console, timings: Timings) -> None:
    t0 = time.perf_counter()
    with console.status("starting PostgreSQL and preparing Airflow (metadata database, dbt manifest) ..."):
        status = get_stack(settings).up()
        prepare_orchestration(settings)
    timings.add("stack", time.perf_counter() - t0, f"PostgreSQL {status.version}, Airflow metadata")
    console.print(f"[green]stack up[/]  PostgreSQL {status.version} at {settings.pg_host}:{settings.pg_port}")


def _drops(settings: Settings, months: int, users: int, seed: int) -> tuple[list[Path], str]:
    """The demo's drops under ``home/drops``: reused when generated with the same arguments."""
    out = settings.home / "drops"
    marker = out / "demo.json"
    wanted = {"months": months, "users": users, "seed": seed}
    existing = sorted(out.glob("month_*/manifest.json"))
    if marker.exists() and json.loads(marker.read_text()) == wanted and len(existing) == months:
        return sorted(p.parent for p in existing), "reused"
    from streamflow.drops.generator.run import generate  # numpy and pyarrow: only when generating

    with RichProgress(console) as progress:
        generate(out, months=months, users=users, seed=seed, progress=progress)
    marker.write_text(json.dumps(wanted))
    return sorted(out.glob("month_*")), "generated"


def _month_state(settings: Settings, drops: list[Path]) -> dict[date, str]:
    """For each drop: 'done' (this very drop was loaded and its monthly run succeeded), 'todo', or
    'foreign' (another drop with the same as_of is loaded: the warehouse holds other data)."""
    with connect(settings) as conn:
        loaded = business_months.loaded_manifests(conn)
        has_runs = conn.execute("select to_regclass('ops.pipeline_runs')").fetchone()[0] is not None
        succeeded = (
            {
                r[0]
                for r in conn.execute(
                    "select as_of from ops.pipeline_runs "
                    "where pipeline = %s and status = 'success' and as_of is not null",
                    (MONTHLY_DAG,),
                )
            }
            if has_runs
            else set()
        )
    state = {}
    for drop in drops:
        as_of = _as_of(drop)
        sha = hashlib.sha256((drop / "manifest.json").read_bytes()).hexdigest()
        if as_of in loaded and loaded[as_of] != sha:
            state[as_of] = "foreign"
        elif as_of in loaded and as_of in succeeded:
            state[as_of] = "done"
        else:
            state[as_of] = "todo"
    return state


def _as_of(drop: Path) -> date:
    return date.fromisoformat(json.loads((drop / "manifest.json").read_text())["as_of"])


def _month_summary(settings: Settings, as_of: date) -> dict[str, int]:
    """Rows the drop brought and rows each mart holds for the month. The labels mart is keyed by
    ``period_start``, and a period's labels arrive with the next drop: the month's ``marts.labels`` counts
    the labels its own drop delivered (period_start = the previous month), next to its ``labels rows``."""
    from streamflow.warehouse.build import mart_row_counts  # dbt's types: only once months are run

    with connect(settings) as conn:
        files = conn.execute("select files from raw.load_log where as_of = %s", (as_of,)).fetchone()[0]
    counts = {f"{name} rows": entry["rows"] for name, entry in files.items()}
    by_month = mart_row_counts(settings)
    marts = dict(by_month.get(as_of, {}))
    if "labels" in marts:
        period = business_months.previous(list(by_month), as_of)
        marts["labels"] = by_month.get(period, {}).get("labels", 0) if period else 0
    counts.update({f"marts.{name}": n for name, n in marts.items()})
    return counts


def _run_months(settings: Settings, console: Console, timings: Timings, drops: list[Path]) -> dict[date, dict]:
    """One Airflow run of the monthly DAG per drop not run yet; the per-month row counts."""
    state = _month_state(settings, drops)
    foreign = sorted(d for d, s in state.items() if s == "foreign")
    if foreign:
        raise DemoError(
            f"the warehouse under {settings.home} already holds other drops for {', '.join(map(str, foreign))}; "
            "the demo needs its own: `make clean` deletes .streamflow/ (all local data), or set STREAMFLOW_HOME "
            "and STREAMFLOW_PG_PORT to run the demo beside it"
        )
    summaries: dict[date, dict[str, int]] = {}
    for drop in drops:
        as_of = _as_of(drop)
        if state[as_of] == "done":
            timings.add(f"month {as_of}", 0.0, "already run: reused")
            console.print(f"[green]{as_of}[/]  already run successfully: reused")
        else:
            _run_month(settings, console, timings, drop, as_of)
        summaries[as_of] = _month_summary(settings, as_of)
    return summaries


def _run_month(settings: Settings, console: Console, timings: Timings, drop: Path, as_of: date) -> None:
    t0 = time.perf_counter()
    with RichProgress(console) as progress:
        progress.start(f"{MONTHLY_DAG} {as_of}")
        result = run_dag(settings, MONTHLY_DAG, {"drop": str(drop), "mode": "monthly"}, progress=progress)
    seconds = time.perf_counter() - t0
    timings.steps[as_of] = step_usage(settings, MONTHLY_DAG, result.run_id)
    if not result.ok:
        failed = [t.task_id for t in result.tasks if t.state == "failed"]
        raise DemoError(
            f"{MONTHLY_DAG} failed for {as_of} at {', '.join(failed) or 'an unknown task'}; log: {result.log_file}"
        )
    states: dict[str, int] = {}
    for t in result.tasks:
        states[t.state] = states.get(t.state, 0) + 1
    note = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    timings.add(f"month {as_of}", seconds, f"{len(result.tasks)} tasks: {note}")
    console.print(f"[green]{as_of}[/]  {MONTHLY_DAG} succeeded in {seconds:.0f} s ({note})")


def _print_month_table(console: Console, summaries: dict[date, dict[str, int]]) -> None:
    table = Table(
        title="per month: rows ingested and mart rows",
        caption="marts.labels: the labels the month's drop delivered (period_start = the previous month)",
    )
    table.add_column("")
    for as_of in summaries:
        table.add_column(as_of.isoformat(), justify="right")
    keys = list(dict.fromkeys(k for s in summaries.values() for k in s))
    for key in keys:
        table.add_row(key, *[f"{s.get(key, 0):,}" for s in summaries.values()])
    console.print(table)


def _show_champion(settings: Settings, console: Console, newest: date, oracle_dir: Path) -> None:
    # ml pulls in MLflow and scikit-learn: imported here, when the demo gets this far (see streamflow.cli)
    from ml.evaluate import evaluate
    from ml.tracking import model_summary

    summary = model_summary(settings)
    champion = summary.get(CHAMPION)
    if not champion:
        raise DemoError("no champion model after the monthly runs: see `streamflow model show`")
    metrics = champion.get("metrics", {})
    console.print(
        f"[green]champion[/]  {settings.model_name} v{champion['version']}  "
        + "  ".join(
            f"{k}={metrics[k]:.3f}"
            for k in ("roc_auc", "pr_auc", "log_loss", "brier", "f1", "threshold")
            if k in metrics
        )
    )
    try:
        evaluation = evaluate(settings, newest, oracle_dir=oracle_dir).as_dict()
        for row in evaluation.get("periods", []):
            console.print(
                f"          period {row['period']}: ROC-AUC {row['model_roc_auc']:.3f} vs oracle "
                f"{row['oracle_roc_auc']:.3f} (ratio {row['ratio']:.3f}, {row['role']})"
            )
    except Exception as exc:  # the comparison is informative only; never fail the demo on it
        console.print(f"[yellow]oracle comparison skipped: {exc}[/]")


def _serve_and_predict(settings: Settings, console: Console, timings: Timings, local: dict) -> None:
    """Start the API, show a real /predict and the user's online features."""
    from serving.deps import api_tokens

    t0 = time.perf_counter()
    api_tokens(settings)  # no admin token outside the embedded stack: say so before starting anything
    read_token = settings.api_read_token
    reader = {"Authorization": f"Bearer {read_token.get_secret_value()}"} if read_token else {}
    env = airflow_environment(settings)
    with console.status("starting the API (loads Feast and the champion) ..."):
        if not services.start(settings, local["api"], env, wait=180):
            raise DemoError(f"the API did not come up; log: {services.log_file(settings, 'api')}")
    api = f"http://127.0.0.1:{settings.api_port}"
    user = _active_user(settings)
    body = json.dumps({"user_id": user})
    answer = httpx.post(f"{api}/predict?reasons={DEMO_REASONS}", json={"user_id": user}, headers=reader, timeout=30)
    timings.add("serve", time.perf_counter() - t0, "API up, first prediction")
    console.print("\n[bold]A prediction from the running API:[/]")
    auth = ' -H "Authorization: Bearer $STREAMFLOW_API_READ_TOKEN"' if reader else ""
    console.print(
        f"curl -s -X POST '{api}/predict?reasons={DEMO_REASONS}' -H 'content-type: application/json' -d '{body}'{auth}",
        markup=False,
        highlight=False,
    )
    console.print_json(answer.text)
    if answer.status_code != 200:
        raise DemoError(f"/predict answered {answer.status_code}; log: {services.log_file(settings, 'api')}")
    _print_reasons(console, answer.json())
    online = httpx.get(f"{api}/features/{user}", headers=reader, timeout=30)
    if online.status_code == 200:
        features = Table(title=f"online features of {user} (customer_360, GET /features/{user})")
        for column in ("feature", "value", "feature view", "as_of"):
            features.add_column(column)
        for name, item in online.json().get("features", {}).items():
            features.add_row(name, str(item.get("value")), str(item.get("feature_view")), str(item.get("as_of")))
        console.print(features)


DEMO_REASONS = 3  # reasons per direction the demo asks /predict for


def _print_reasons(console: Console, answer: dict) -> None:
    """The prediction in one line, then its reasons: the features that push this user's risk up and those that
    hold it down, strongest first, with the value served and the contribution to the log-odds."""
    verdict = "likely to churn" if answer.get("churn") else "likely to stay"
    console.print(
        f"\n[bold]{answer.get('user_id')}[/]: churn probability {answer.get('churn_probability', 0):.1%}, "
        f"{verdict} (threshold {answer.get('threshold', 0):.1%}, model v{answer.get('model_version')})",
        highlight=False,
    )
    reasons = answer.get("reasons")
    if not reasons:
        console.print("  (this model gives no reasons)")
        return
    table = Table(title="why (each feature's contribution to the churn log-odds; +0.7 about doubles the odds)")
    for column, justify in (("", "left"), ("feature", "left"), ("value", "right"), ("contribution", "right")):
        table.add_column(column, justify=justify)
    for direction, arrow, style in (("up", "pushes risk up", "red"), ("down", "holds risk down", "green")):
        for reason in reasons.get(direction, []):
            label = reason.get("label") or reason["feature"]
            table.add_row(
                Text(arrow, style=style),
                f"{label} ({reason['feature']})",
                str(reason.get("value")),
                f"{reason['contribution']:+.3f}",
            )
    console.print(table)


UI_WAIT_SECONDS = 240.0  # Airflow's API server, scheduler and DAG processor take about a minute on 2 cores


def _start_uis(
    settings: Settings, console: Console, timings: Timings, local: dict, env: dict[str, str]
) -> dict[str, bool]:
    """Start the MLflow UI, dbt docs and Airflow together and wait until each answers; {service: answers}."""
    t0 = time.perf_counter()
    names = ("mlflow", "docs", "airflow")
    with console.status("starting the MLflow UI, dbt docs and Airflow, waiting until each answers ..."):
        for name in names:
            services.start(settings, local[name], env, wait=0)
        answered = services.wait_answering(settings, [local[n] for n in names], UI_WAIT_SECONDS)
    answered["api"] = services.answers(local["api"].health)
    up = [n for n in names if answered[n]]
    timings.add("UIs", time.perf_counter() - t0, f"{len(up)} of {len(names)} answering")
    return answered


def _print_where_everything_is(
    settings: Settings, console: Console, timings: Timings, local: dict, answered: dict[str, bool]
) -> None:
    _print_step_table(console, timings.steps)
    phases = Table(title="time per phase")
    phases.add_column("phase")
    phases.add_column("seconds", justify="right")
    phases.add_column("")
    for name, seconds, note in timings.phases:
        phases.add_row(name, f"{seconds:.0f}", note)
    console.print(phases)

    uis = Table(title="where everything is", show_header=False)

    def url(name: str) -> Text:
        if answered.get(name, False):
            return Text(local[name].url)
        return Text(f"{local[name].url}  not answering: see {services.log_file(settings, name)}", style="red")

    uis.add_row("API docs", url("api"))
    uis.add_row("API admin token", _api_token_where(settings))
    login = airflow_login(settings)
    uis.add_row("Airflow", url("airflow"))
    uis.add_row("Airflow login", Text(f"{login.username} / {login.password}  (kept in {login.file})"))
    uis.add_row("MLflow", url("mlflow"))
    uis.add_row("dbt docs", url("docs"))
    uis.add_row("warehouse", 'eval "$(.venv/bin/streamflow stack env --show-secrets)" && psql')
    uis.add_row("logs", str(settings.home / "logs"))
    console.print(uis)
    console.print(
        "Stop everything: [bold]make stop[/] (or .venv/bin/streamflow stop). Run again: make demo reuses what exists."
    )


def _print_step_table(console: Console, steps: dict[date, dict]) -> None:
    """Each pipeline step of each month run here: wall time and the peak memory of its task's process."""
    if not steps:
        return
    table = Table(
        title="per step: seconds / peak memory (MB) of the task's process (ops.step_runs)",
        caption="months reused from an earlier run are not shown; dbt's own tasks are timed by Airflow only",
    )
    table.add_column("step")
    for as_of in steps:
        table.add_column(as_of.isoformat(), justify="right")
    names = list(dict.fromkeys(name for month in steps.values() for name in month))
    for name in names:
        cells = []
        for month in steps.values():
            status, usage = month.get(name, (None, None))
            cells.append(
                "-"
                if usage is None
                else f"{usage.seconds:.1f} s / {usage.peak_rss_mb:.0f} MB"
                + ("" if status == "success" else f" ({status})")
            )
        table.add_row(name, *cells)
    console.print(table)


def _api_token_where(settings: Settings) -> Text:
    """Where the API's admin token (/events, /admin/*) is: never the token itself."""
    from streamflow.core.stack import api_token_file

    if settings.api_token:
        return Text("STREAMFLOW_API_TOKEN (as set)")
    return Text(
        f'kept in {api_token_file(settings)}; export it: eval "$(.venv/bin/streamflow stack env --show-secrets)"'
    )


def _active_user(settings: Settings) -> str:
    """A subscriber active at the newest built month (served online)."""
    with connect(settings) as conn:
        built = business_months.built_months(conn, settings)
        row = (
            conn.execute(
                f"select user_id from {MART_SCHEMA}.subscriptions_profile where as_of = %s order by user_id limit 1",
                (business_months.business_timestamp(built[-1]),),
            ).fetchone()
            if built
            else None
        )
    if row is None:
        raise DemoError(f"no active subscriber in {MART_SCHEMA}.subscriptions_profile")
    return row[0]
