"""Airflow on the platform's own stack: environment, metadata database, running a DAG, reading outcomes.

In the embedded stack Airflow's metadata lives in the ``airflow`` database of the managed PostgreSQL
and its home under ``.streamflow/airflow``. With an external database (compose), Airflow's own
``AIRFLOW__*`` variables from the environment are used as they are.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from streamflow.core import lock, services
from streamflow.core.db import database_url
from streamflow.core.env import settings_environment, tool_environment
from streamflow.core.errors import StreamflowError
from streamflow.core.progress import SILENT, Progress
from streamflow.core.settings import Settings
from streamflow.core.stack import get_stack
from streamflow.warehouse import runner

MONTHLY_DAG = "streamflow_monthly"
MATERIALIZE_DAG = "streamflow_materialize"
MONITOR_DAG = "streamflow_monitor"
AIRFLOW_ADMIN = "admin"  # the local Airflow's one user, with the admin role
AIRFLOW_SERVICE = "airflow"  # its name among services.local_services: pid file, logs, `streamflow stop`
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


class OrchestrationError(StreamflowError):
    """Airflow could not be prepared or a DAG run could not be started."""


def airflow_home(settings: Settings) -> Path:
    return settings.home / "airflow"


@dataclass(frozen=True)
class AirflowLogin:
    username: str
    password: str
    file: Path  # where it is kept (mode 0600), in the format Airflow's SimpleAuthManager reads


def airflow_password_file(settings: Settings) -> Path:
    return airflow_home(settings) / "simple_auth_manager_passwords.json"


def airflow_login(settings: Settings) -> AirflowLogin:
    """The local Airflow's admin login. Its password is generated once and kept in
    ``home/airflow/simple_auth_manager_passwords.json`` (``{"admin": "<password>"}``, mode 0600); deleting
    the file makes a new one at the next start."""
    path = airflow_password_file(settings)
    try:
        password = json.loads(path.read_text())[AIRFLOW_ADMIN]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        password = None
    if not isinstance(password, str) or not password:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({AIRFLOW_ADMIN: secrets.token_urlsafe(18)}) + "\n")
        if path.exists():  # unreadable or without our user: replaced
            os.replace(fresh, path)
        else:
            with contextlib.suppress(FileExistsError):  # another process made it first: theirs is kept
                os.link(fresh, path)
            fresh.unlink()
        password = json.loads(path.read_text())[AIRFLOW_ADMIN]
    os.chmod(path, 0o600)  # Airflow rewrites the file in place when it adds a user: keep it private
    return AirflowLogin(AIRFLOW_ADMIN, password, path)


def airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def airflow_environment(settings: Settings) -> dict[str, str]:
    """The environment Airflow processes (and the tasks they run) need: the caller's environment,
    the platform's settings, and Airflow's configuration for this stack."""

    env = dict(os.environ)
    derived = tool_environment(settings)  # dbt's profile and Feast's yaml read these
    env.update(derived)
    home = airflow_home(settings)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_dir),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
            "AIRFLOW__API__PORT": str(settings.airflow_port),
            "AIRFLOW__API__HOST": "127.0.0.1",  # the local UI listens on loopback only
            # programs Airflow and its tasks start by name come from the project's virtualenv first,
            # whatever the caller's PATH (a new user never activates the virtualenv)
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)]),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "SCARF_ANALYTICS": "false",
            "DO_NOT_TRACK": "true",
        }
    )
    if settings.embedded:
        env.update(
            {
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url(settings, settings.airflow_db, "psycopg2"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": database_url(settings, settings.airflow_db, "psycopg"),
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                # one admin who logs in with the password generated under home (see airflow_login)
                "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{AIRFLOW_ADMIN}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(airflow_login(settings).file),
            }
        )
    # tasks build their own Settings from STREAMFLOW_* variables: hand them exactly ours
    for key in [k for k in env if k.startswith("STREAMFLOW_")]:
        if key not in derived and key != lock.ENV_VAR:  # a run holding the pipeline lock hands it to its tasks
            del env[key]
    env.update(settings_environment(settings))
    return env


def ensure_metadata_db(settings: Settings) -> None:
    """Run ``airflow db migrate`` once per Airflow version (it takes ~20 s; later calls are free)."""

    version = importlib.metadata.version("apache-airflow-core")
    marker = airflow_home(settings) / f".migrated-{version}"
    target = settings.database_url or str(settings.pg_port)
    # airflow.cfg holds the JWT secret every component must share: the first Airflow command writes it,
    # so it is written here, before components that start together could each write their own
    config = airflow_home(settings) / "airflow.cfg"
    if marker.exists() and marker.read_text() == target and config.exists():
        return
    airflow_home(settings).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [airflow_bin(), "db", "migrate"], env=airflow_environment(settings), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise OrchestrationError(f"airflow db migrate failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    marker.write_text(target)


@dataclass
class TaskOutcome:
    task_id: str
    state: str
    seconds: float | None
    try_number: int


@dataclass
class DagRunResult:
    dag_id: str
    run_id: str
    state: str
    tasks: list[TaskOutcome]
    log_file: Path

    @property
    def ok(self) -> bool:
        return self.state == "success"


_END_TASK = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
_START_TASK = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
_RUNNING_TASK = re.compile(r"\[DAG TEST\] running task <TaskInstance: \S+ (\S+) \[")
_RUN_ID = re.compile(r"run_id=(\S+?),")


def run_dag(
    settings: Settings,
    dag_id: str,
    conf: dict,
    progress: Progress = SILENT,
) -> DagRunResult:
    """Run one DAG run in this process tree with ``airflow dags test`` and read every task's outcome
    from Airflow's metadata database. ``progress`` advances by one as each task ends, named after it."""
    ensure_metadata_db(settings)
    month = conf.get("as_of") or _drop_month(conf.get("drop"))
    with lock.pipeline_lock(settings, dag_id, month):  # one run at a time; its tasks inherit the lock
        return _run_and_read(settings, dag_id, conf, progress)


def _drop_month(drop: str | None) -> str | None:
    try:
        return json.loads((Path(drop) / "manifest.json").read_text())["as_of"] if drop else None
    except (OSError, ValueError, KeyError):
        return None


def _run_and_read(settings: Settings, dag_id: str, conf: dict, progress: Progress) -> DagRunResult:
    logs = airflow_home(settings) / "runs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"{dag_id}-{time.strftime('%Y%m%dT%H%M%S')}.log"
    cmd = [airflow_bin(), "dags", "test", dag_id, "--conf", json.dumps(conf)]
    what = " ".join(filter(None, [dag_id, conf.get("as_of") or _drop_month(conf.get("drop"))]))
    with open(log_file, "w") as log:
        proc = subprocess.Popen(
            cmd, env=airflow_environment(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        follower = RunFollower(what, progress, lambda run_id: _task_count(settings, dag_id, run_id))
        for line in proc.stdout:
            log.write(line)
            follower.line(line)
        proc.wait()
    if follower.run_id is None:
        raise OrchestrationError(
            f"the {dag_id} run did not start (airflow exited {proc.returncode}); see {log_file}:\n"
            + "\n".join(log_file.read_text().splitlines()[-25:])
        )
    return read_run(settings, dag_id, follower.run_id, log_file)


class RunFollower:
    """Follows the output of `airflow dags test` and reports to ``progress``: once the run exists, its number
    of tasks (``count_tasks(run_id)``) as the total; the task running now; one unit per task that ends."""

    def __init__(self, what: str, progress: Progress, count_tasks: Callable[[str], int | None]):
        self.what = what
        self.progress = progress
        self.count_tasks = count_tasks
        self.run_id: str | None = None
        self.done = 0
        self.detail = ""

    def line(self, line: str) -> None:
        if self.run_id is None and (
            m := _RUNNING_TASK.search(line) or ("DagRun Finished" in line and _RUN_ID.search(line))
        ):
            self.run_id = m.group(1)
            self.progress.start(self.what, self.count_tasks(self.run_id))
            if self.detail:
                self.progress.advance(0, self.detail)
        if m := _START_TASK.search(line):
            self.detail = f"{self.done} done, running {m.group(1)}"
            self.progress.advance(0, self.detail)
        elif m := _END_TASK.search(line):
            self.done += 1
            self.progress.advance(1, f"{m.group(1)} done")


def _task_count(settings: Settings, dag_id: str, run_id: str) -> int | None:
    """How many task instances the run has (Airflow creates them all when the run starts)."""
    engine = sa.create_engine(airflow_environment(settings)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        with engine.connect() as conn:
            n = conn.execute(
                sa.text("select count(*) from task_instance where dag_id = :d and run_id = :r"),
                {"d": dag_id, "r": run_id},
            ).scalar_one()
        return int(n) or None
    except sa.exc.SQLAlchemyError:
        return None  # the bar then counts without a total
    finally:
        engine.dispose()


def read_run(settings: Settings, dag_id: str, run_id: str, log_file: Path) -> DagRunResult:
    """State of a DAG run and of each of its tasks, from Airflow's metadata database."""

    url = airflow_environment(settings)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            state = conn.execute(
                sa.text("select state from dag_run where dag_id = :d and run_id = :r"), {"d": dag_id, "r": run_id}
            ).scalar_one()
            rows = conn.execute(
                sa.text(
                    "select task_id, coalesce(state, 'none'), extract(epoch from end_date - start_date), try_number "
                    "from task_instance where dag_id = :d and run_id = :r "
                    "order by start_date nulls last, task_id"
                ),
                {"d": dag_id, "r": run_id},
            ).all()
    finally:
        engine.dispose()
    tasks = [TaskOutcome(t, s, float(sec) if sec is not None else None, n) for t, s, sec, n in rows]
    return DagRunResult(dag_id, run_id, state, tasks, log_file)


def local_parallelism() -> int:
    """Task slots of the local LocalExecutor: one per core, at least 2 and at most 8. (Airflow's default of
    32 forks 32 worker processes when the scheduler starts, far more than a laptop runs at once.)"""
    return max(2, min(os.cpu_count() or 2, 8))


def airflow_server_environment(settings: Settings) -> dict[str, str]:
    """`airflow_environment` plus what the long-running components need on one machine: the LocalExecutor,
    task workers that reach the execution API on our port, and every server on loopback."""
    env = airflow_environment(settings)
    env.setdefault("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    env.setdefault("AIRFLOW__CORE__PARALLELISM", str(local_parallelism()))
    env.update(
        {
            # the default is http://localhost:8080/execution/, whatever port the API server has
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{settings.airflow_port}/execution/",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",  # if it is turned on
        }
    )
    return env


def airflow_programs(settings: Settings) -> list[services.Program]:
    """The local Airflow's components. The scheduler and the triggerer run without their log servers
    (`serve-logs`, which listen on every interface): the API server reads task logs from the files
    under ``home/airflow/logs`` instead."""
    airflow = airflow_bin()
    api = (airflow, "api-server", "--host", "127.0.0.1", "--port", str(settings.airflow_port))
    return [
        services.Program("api-server", api),
        services.Program("scheduler", (airflow, "scheduler", "--skip-serve-logs")),
        services.Program("dag-processor", (airflow, "dag-processor")),
        services.Program("triggerer", (airflow, "triggerer", "--skip-serve-logs")),
    ]


def run_airflow(settings: Settings) -> None:
    """Run the local Airflow until SIGINT or SIGTERM (`streamflow stop`): the metadata database migrated
    once, then each component supervised in its own process group (see `services.supervise`)."""
    ensure_metadata_db(settings)
    services.supervise(settings, AIRFLOW_SERVICE, airflow_programs(settings), airflow_server_environment(settings))


def prepare_orchestration(settings: Settings) -> None:
    """What a DAG run needs before Airflow parses the DAGs: the database up, Airflow's metadata
    database migrated, dbt packages installed and the manifest the DAGs are built from."""
    get_stack(settings).up()
    runner.parse(settings)
    ensure_metadata_db(settings)
