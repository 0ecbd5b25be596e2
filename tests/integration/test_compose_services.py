"""Compose services run as docker-compose.yml runs them, without Docker: the PostgreSQL init
script on a real PostgreSQL, and the MLflow server with the compose command and environment
(only host names and ports are swapped for local ones)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from streamflow.stack import EmbeddedPostgres, _bin_dir
from tests.compose_model import ROOT, command_argv, environment, interpolate, raw_compose, read_env_file
from tests.conftest import free_port, make_settings

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
    settings = make_settings(tmp_path_factory.mktemp("pg"), pg_user="postgres", warehouse_db="postgres",
                             mlflow_db="postgres", airflow_db="postgres", feast_registry_db="postgres")
    server = EmbeddedPostgres(settings)
    server.up()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(environment(rendered["postgres"]))
    env.update(PATH=f"{_bin_dir()}:{env['PATH']}", PGHOST=settings.pg_host, PGPORT=str(settings.pg_port),
               PGPASSWORD=server.password())
    proc = subprocess.run(["bash", str(ROOT / "ops/postgres/init-databases.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
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
    """The URL each client of the stack uses, per database."""
    api = environment(rendered["api"])
    return {
        "warehouse": api["STREAMFLOW_DATABASE_URL"],
        "feast": api["STREAMFLOW_FEAST_REGISTRY_URL"].replace("+psycopg", ""),
        "airflow": environment(rendered["airflow-scheduler"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace(
            "+psycopg", ""),
        "mlflow": environment(rendered["mlflow"])["MLFLOW_BACKEND_STORE_URI"].replace("+psycopg2", ""),
    }


def test_init_script_gives_each_database_its_own_owner_role_reachable_with_the_compose_urls(compose_postgres,
                                                                                            rendered):
    settings, server, proc = compose_postgres
    assert "password" not in proc.stdout.lower()  # passwords never echoed
    for db, url in _compose_urls(rendered).items():
        with psycopg.connect(_local(url, settings), connect_timeout=5) as conn:
            user, current_db = conn.execute("select current_user, current_database()").fetchone()
            assert (current_db, user) == (db, ROLES[db])
            owner = conn.execute(
                "select pg_get_userbyid(datdba) from pg_database where datname = current_database()").fetchone()[0]
            assert owner == ROLES[db]
            flags = conn.execute(
                "select rolsuper, rolcreatedb, rolcreaterole from pg_roles where rolname = current_user").fetchone()
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
    return [*argv[: i + 1], value, *argv[i + 2:]]


@pytest.fixture(scope="module")
def mlflow_server(compose_postgres, rendered, tmp_path_factory):
    """`mlflow server` with the compose service's command and environment."""
    settings, _, _ = compose_postgres
    service = rendered["mlflow"]
    argv = command_argv(service["command"])
    artifacts = tmp_path_factory.mktemp("mlartifacts")
    port = free_port()
    argv = _swap(_swap(_swap(argv, "--host", "127.0.0.1"), "--port", str(port)), "--workers", "1")
    argv = _swap(argv, "--artifacts-destination", str(artifacts))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(environment(service))
    env["MLFLOW_BACKEND_STORE_URI"] = _local(env["MLFLOW_BACKEND_STORE_URI"], settings)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    log = tmp_path_factory.mktemp("logs") / "mlflow.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=artifacts,
                                start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield port, artifacts, proc
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from None
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_mlflow_server_answers_other_containers_and_the_published_port_only(mlflow_server):
    port, _, _ = mlflow_server
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=5"
    for host in ("mlflow:5000", f"localhost:{port}", f"127.0.0.1:{port}"):
        assert httpx.get(url, headers={"Host": host}, timeout=10).status_code == 200, host
    assert httpx.get(url, headers={"Host": "attacker.example"}, timeout=10).status_code == 403


def test_mlflow_keeps_runs_in_its_database_and_artifacts_on_the_artifact_volume(mlflow_server, compose_postgres,
                                                                                rendered):
    port, artifacts, _ = mlflow_server
    settings, _, _ = compose_postgres
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Host": "mlflow:5000"}, timeout=30)
    experiment = api.post("/api/2.0/mlflow/experiments/create", json={"name": "compose-check"})
    assert experiment.status_code == 200, experiment.text
    experiment_id = experiment.json()["experiment_id"]
    location = api.get("/api/2.0/mlflow/experiments/get", params={"experiment_id": experiment_id}).json()
    assert location["experiment"]["artifact_location"].startswith("mlflow-artifacts:")  # proxied by the server
    put = api.put(f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/check.txt", content=b"artifact")
    assert put.status_code == 200, put.text
    assert (artifacts / experiment_id / "check.txt").read_bytes() == b"artifact"
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
