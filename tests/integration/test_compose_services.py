"""Compose services run as docker-compose.yml runs them, without Docker: the PostgreSQL init
script on a real PostgreSQL, and the MLflow server with the compose command, environment and login
configuration (ops/mlflow/basic_auth.ini, as the service mounts it; only host names and ports are
swapped for local ones)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pandas as pd
import psycopg
import pytest
import redis
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ml.promote import promote
from ml.tracking import load_model_alias
from ml.train import train
from streamflow.core.settings import Settings
from streamflow.core.stack import EmbeddedPostgres, _bin_dir
from streamflow.features import apply, materialize, online
from tests.compose_model import (
    ROOT,
    command_argv,
    environment,
    interpolate,
    option_value,
    raw_compose,
    read_env_file,
)
from tests.conftest import free_port, make_settings
from tests.serving_world import MAR, api_server, copy_warehouse

pytestmark = pytest.mark.integration

ROLES = {"warehouse": "streamflow", "mlflow": "mlflow", "airflow": "airflow", "feast": "feast"}


@pytest.fixture(scope="module")
def compose_env(tmp_path_factory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("env") / ".env"
    subprocess.run(["bash", str(ROOT / "ops/scripts/init-env.sh"), str(target)], check=True, capture_output=True)
    return read_env_file(target)


@pytest.fixture(scope="module")
def rendered(compose_env) -> dict:
    return interpolate(raw_compose(), compose_env)["services"]


@pytest.fixture(scope="module")
def compose_postgres(tmp_path_factory, rendered):
    """A fresh PostgreSQL whose only role is the superuser `postgres`, initialised by the compose init
    script with the compose postgres service's environment."""
    settings = make_settings(
        tmp_path_factory.mktemp("pg"),
        pg_user="postgres",
        warehouse_db="postgres",
        mlflow_db="postgres",
        airflow_db="postgres",
        feast_registry_db="postgres",
    )
    server = EmbeddedPostgres(settings)
    server.up(roles=False)  # a plain server: the init script creates every role
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(environment(rendered["postgres"]))
    env["GRANTS_SQL_DIR"] = str(ROOT / "ops/postgres")  # compose mounts ops/postgres at /opt/streamflow/postgres
    env.update(
        PATH=f"{_bin_dir()}:{env['PATH']}",
        PGHOST=settings.pg_host,
        PGPORT=str(settings.pg_port),
        PGPASSWORD=server.password(),
    )
    proc = subprocess.run(
        ["bash", str(ROOT / "ops/postgres/init-databases.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    yield settings, server, proc
    server.down()


def _local(url: str, settings) -> str:
    """A compose URL (host `postgres`, port 5432) pointed at the local server."""
    parts = urlsplit(url)
    assert (parts.hostname, parts.port) == ("postgres", 5432)
    netloc = parts.netloc.replace("@postgres:5432", f"@{settings.pg_host}:{settings.pg_port}")
    return urlunsplit(parts._replace(netloc=netloc))


def _compose_urls(rendered) -> dict[str, str]:
    """The URL each owner of a database uses (the pipeline's: the job's), per database."""
    api = environment(rendered["job"])
    return {
        "warehouse": api["STREAMFLOW_DATABASE_URL"],
        "feast": api["STREAMFLOW_FEAST_REGISTRY_URL"].replace("+psycopg", ""),
        "airflow": environment(rendered["airflow-scheduler"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace(
            "+psycopg", ""
        ),
        "mlflow": environment(rendered["mlflow"])["MLFLOW_BACKEND_STORE_URI"].replace("+psycopg2", ""),
    }


def test_init_script_gives_each_database_its_own_owner_role_reachable_with_the_compose_urls(compose_postgres, rendered):
    settings, server, proc = compose_postgres
    assert "password" not in proc.stdout.lower()  # passwords never echoed
    for db, url in _compose_urls(rendered).items():
        with psycopg.connect(_local(url, settings), connect_timeout=5) as conn:
            user, current_db = conn.execute("select current_user, current_database()").fetchone()
            assert (current_db, user) == (db, ROLES[db])
            owner = conn.execute(
                "select pg_get_userbyid(datdba) from pg_database where datname = current_database()"
            ).fetchone()[0]
            assert owner == ROLES[db]
            flags = conn.execute(
                "select rolsuper, rolcreatedb, rolcreaterole from pg_roles where rolname = current_user"
            ).fetchone()
            assert flags == (False, False, False)
            conn.execute("create table t (x int)")  # the owner can build its schema (migrations, dbt)
            conn.execute("insert into t values (1)")


def test_no_role_can_connect_to_another_roles_database(compose_postgres, rendered):
    settings, _, _ = compose_postgres
    urls = {db: _local(url, settings) for db, url in _compose_urls(rendered).items()}
    for db, url in urls.items():
        for other in urls:
            if other == db:
                continue
            foreign = urlunsplit(urlsplit(url)._replace(path=f"/{other}"))
            with pytest.raises(psycopg.OperationalError, match="permission denied|CONNECT privilege"):
                psycopg.connect(foreign, connect_timeout=5)


def test_a_wrong_password_is_refused(compose_postgres, rendered):
    settings, _, _ = compose_postgres
    url = _local(_compose_urls(rendered)["warehouse"], settings)
    parts = urlsplit(url)
    wrong = urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":wrong@")))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)


# ---------------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------------
def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited {proc.returncode}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not answering after {timeout}s")


def _swap(argv: list[str], option: str, value: str) -> list[str]:
    i = argv.index(option)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


def _mounted(service: dict, target: str) -> Path:
    """The file of the repository a compose service mounts at ``target``."""
    for mount in service.get("volumes", []):
        source, mounted, *_ = mount.split(":")
        if mounted == target:
            assert source.startswith("./"), mount
            return ROOT / source
    raise AssertionError(f"nothing is mounted at {target}")


@pytest.fixture(scope="module")
def mlflow_server(compose_postgres, rendered, tmp_path_factory):
    """`mlflow server` with the compose service's command and environment, its login configured by the very
    file the service mounts, its login store in PostgreSQL through the service's libpq variables."""
    settings, _, _ = compose_postgres
    service = rendered["mlflow"]
    argv = command_argv(service["command"])
    artifacts = tmp_path_factory.mktemp("mlartifacts")
    port = free_port()
    argv = _swap(_swap(_swap(argv, "--host", "127.0.0.1"), "--port", str(port)), "--workers", "1")
    argv = _swap(argv, "--artifacts-destination", str(artifacts))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG"))}
    env.update(environment(service))
    env["MLFLOW_BACKEND_STORE_URI"] = _local(env["MLFLOW_BACKEND_STORE_URI"], settings)
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(_mounted(service, env["MLFLOW_AUTH_CONFIG_PATH"]))
    assert (env["PGHOST"], env["PGPORT"]) == ("postgres", "5432")
    env.update(PGHOST=settings.pg_host, PGPORT=str(settings.pg_port))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    log = tmp_path_factory.mktemp("logs") / "mlflow.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=artifacts, start_new_session=True
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield port, artifacts, log
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from None
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def _login(rendered) -> tuple[str, str]:
    """The MLflow login the compose clients (pipeline, job, api) send."""
    env = environment(rendered["api"])
    return env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]


def test_mlflow_server_answers_other_containers_and_the_published_port_only(mlflow_server, rendered):
    port, _, _ = mlflow_server
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=5"
    for host in ("mlflow:5000", f"localhost:{port}", f"127.0.0.1:{port}"):
        assert httpx.get(url, headers={"Host": host}, auth=_login(rendered), timeout=10).status_code == 200, host
    assert httpx.get(url, headers={"Host": "attacker.example"}, auth=_login(rendered), timeout=10).status_code == 403


def test_mlflow_refuses_a_call_without_the_login_from_env(mlflow_server, rendered, compose_env, compose_postgres):
    port, _, log = mlflow_server
    settings, _, _ = compose_postgres
    base = f"http://127.0.0.1:{port}"
    user, password = _login(rendered)
    assert (user, password) == (compose_env["MLFLOW_ADMIN_USER"], compose_env["MLFLOW_ADMIN_PASSWORD"])
    search = f"{base}/api/2.0/mlflow/registered-models/search"
    assert httpx.get(search, timeout=10).status_code == 401  # anonymous
    assert httpx.get(search, auth=(user, "not-the-password"), timeout=10).status_code == 401
    assert httpx.get(search, auth=("intruder", password), timeout=10).status_code == 401
    assert httpx.get(f"{base}/", timeout=10).status_code == 401  # the UI too
    assert httpx.get(search, auth=(user, password), timeout=10).status_code == 200
    # the admin was created from .env in the login store: the `mlflow` database, next to the tracking tables
    with psycopg.connect(_local(_compose_urls(rendered)["mlflow"], settings)) as conn:
        assert conn.execute("select is_admin from users where username = %s", (user,)).fetchone() == (True,)
        assert conn.execute("select to_regclass('alembic_version_auth')").fetchone()[0] is not None
    assert password not in log.read_text()  # the server never prints the password
    # the MLflow client without the login is refused too
    with pytest.raises(MlflowException, match="401"):
        MlflowClient(tracking_uri=base, registry_uri=base).search_registered_models()


def test_mlflow_keeps_runs_in_its_database_and_artifacts_on_the_artifact_volume(
    mlflow_server, compose_postgres, rendered
):
    port, artifacts, _ = mlflow_server
    settings, _, _ = compose_postgres
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Host": "mlflow:5000"}, auth=_login(rendered), timeout=30
    )
    experiment = api.post("/api/2.0/mlflow/experiments/create", json={"name": "compose-check"})
    assert experiment.status_code == 200, experiment.text
    experiment_id = experiment.json()["experiment_id"]
    location = api.get("/api/2.0/mlflow/experiments/get", params={"experiment_id": experiment_id}).json()
    assert location["experiment"]["artifact_location"].startswith("mlflow-artifacts:")  # proxied by the server
    put = api.put(f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/check.txt", content=b"artifact")
    assert put.status_code == 200, put.text
    assert (artifacts / experiment_id / "check.txt").read_bytes() == b"artifact"
    assert (
        httpx.get(
            f"http://127.0.0.1:{port}/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/check.txt", timeout=10
        ).status_code
        == 401
    )  # artifacts need the login as well
    with psycopg.connect(_local(_compose_urls(rendered)["mlflow"], settings)) as conn:
        names = [r[0] for r in conn.execute("select name from experiments")]
        assert "compose-check" in names


def test_the_compose_healthcheck_of_mlflow_passes_against_the_running_server(mlflow_server, rendered):
    port, _, _ = mlflow_server
    test = rendered["mlflow"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    argv = [a.replace("localhost:5000", f"localhost:{port}") for a in test[1:]]
    argv[0] = sys.executable if argv[0] == "python" else argv[0]
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    with socket.socket() as s:  # and fails when nothing answers
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    argv = [a.replace(f"localhost:{port}", f"localhost:{closed}") for a in argv]
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode != 0


# ---------------------------------------------------------------------------------------------
# the API on PostgreSQL, Redis and the MLflow server, wired as compose wires them
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose_redis(tmp_path_factory):
    """A real redis-server on a free loopback port, standing in for the compose service `redis`."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed (installed by `make sysdeps`)"
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path_factory.mktemp("redis")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(timeout=20)


def _swapped(env: dict[str, str], settings, redis_port: int, mlflow_port: int, home: Path) -> dict[str, str]:
    """A compose service's STREAMFLOW_* environment with the compose host names pointed at the local services."""
    out = {}
    for key, value in env.items():
        if "@postgres:5432" in value:
            value = _local(value, settings)
        out[key] = value
    assert out["STREAMFLOW_REDIS_URL"] == "redis:6379" and out["STREAMFLOW_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert out["STREAMFLOW_ONLINE_STORE"] == "redis"
    out.update(
        STREAMFLOW_REDIS_URL=f"127.0.0.1:{redis_port}",
        STREAMFLOW_MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mlflow_port}",
        STREAMFLOW_PROJECT_DIR=str(ROOT),
        STREAMFLOW_HOME=str(home),
    )
    return out


def _settings_of(env: dict[str, str], **overrides):
    values = {k.removeprefix("STREAMFLOW_").lower(): v for k, v in env.items() if k.startswith("STREAMFLOW_")}
    return Settings(_env_file=None, **{**values, **overrides})


def test_the_api_serves_a_prediction_through_postgres_redis_and_the_mlflow_server_wired_as_compose_wires_them(
    compose_postgres, mlflow_server, compose_redis, rendered, built_warehouse, tmp_path_factory, monkeypatch
):
    """PostgreSQL with the compose roles, Redis, the MLflow server and `streamflow serve`, each with its compose
    service's command and environment variable names (only host names, ports and paths swapped for local ones).
    The job service's environment loads a month online (Redis) and promotes a champion through the MLflow
    server; the api service's environment then answers /predict from Redis with that champion."""
    settings, _, _ = compose_postgres
    mlflow_port, _, _ = mlflow_server
    tmp = tmp_path_factory.mktemp("compose_api")
    job_env = _swapped(environment(rendered["job"]), settings, compose_redis, mlflow_port, tmp / "job")
    api_env = _swapped(environment(rendered["api"]), settings, compose_redis, mlflow_port, tmp / "api")
    api_compose = environment(rendered["api"])
    own = {"STREAMFLOW_API_TOKEN", "STREAMFLOW_DATABASE_URL", "STREAMFLOW_FEAST_REGISTRY_URL"}  # the api's login
    shared = {k: v for k, v in api_compose.items() if k.startswith("STREAMFLOW_") and k not in own}
    assert shared.items() <= environment(rendered["job"]).items()  # the job and the api read the same settings
    assert urlsplit(api_compose["STREAMFLOW_DATABASE_URL"]).username == "streamflow_api"
    # the MLflow login: the MLflow client reads it from the environment, in this process as in the containers
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert job_env[key] == api_env[key] and job_env[key]
        monkeypatch.setenv(key, job_env[key])
    job = _settings_of(job_env, dbt_target_path=built_warehouse.dbt_target_path, promotion_min_roc_auc=0.5)

    # the monthly job, as the `job` container runs it: warehouse (a copy of the built one), Feast, MLflow
    copy_warehouse(built_warehouse, "dbt_warehouse_template", job, tmp / "warehouse.dump")
    apply.apply(job)
    materialize.materialize(job, MAR)
    train(job, MAR)
    assert promote(job).champion_after == "1"
    active = materialize.active_users(job, MAR)

    # the api container: `streamflow serve` with the api service's command and environment
    argv = command_argv(rendered["api"]["command"])
    assert argv[:2] == ["streamflow", "serve"] and option_value(argv, "--workers") == "1"
    serve_settings = _settings_of(api_env)
    assert serve_settings.online_store == "redis" and serve_settings.api_token is not None
    with api_server(serve_settings, tmp / "api.log", "--workers", option_value(argv, "--workers")) as (url, _proc):
        api = httpx.Client(base_url=url, timeout=30)
        r = api.post("/predict", json={"user_id": active[0]})
        assert r.status_code == 200, r.text
        body = r.json()
        champion = load_model_alias(job, "champion")
        frame = pd.DataFrame([{name: body["features"][name]["value"] for name in champion.features}])
        assert body["model_version"] == "1"
        assert body["churn_probability"] == pytest.approx(float(champion.predict_proba(frame)[0]), abs=1e-12)
        served = {k: v["value"] for k, v in body["features"].items()}
        assert served == pytest.approx(online.online_features(job, active[0], "churn_model_v1").values)  # Redis
        token = {"Authorization": f"Bearer {api_env['STREAMFLOW_API_TOKEN']}"}
        event = {"user_id": active[0], "watch_minutes_today": 33.0, "last_session_at": "2024-04-03T19:00:00Z"}
        assert api.post("/events", json=event).status_code == 401
        assert api.post("/events", json=event, headers=token).json()["online"] is True
        assert api.get(f"/features/{active[0]}").json()["features"]["watch_minutes_today"]["value"] == 33.0
        assert api.get("/ready").json()["ready"] is True
