"""The embedded PostgreSQL: start, idempotent up, crash recovery, status, stop."""

from __future__ import annotations

import json
import os
import stat

import psycopg
import pytest

from streamflow.core.stack import EmbeddedPostgres, StackError, get_stack
from streamflow.drops.generator.run import generate
from tests.conftest import free_port, make_settings, run_cli


@pytest.fixture()
def own_settings(own_home):
    return make_settings(own_home)


def test_up_starts_a_real_server_with_the_project_databases_and_a_private_password(own_settings):
    server = EmbeddedPostgres(own_settings)
    try:
        st = server.up()
        assert st.running and st.version.startswith("18")
        assert {"streamflow", "mlflow", "airflow", "feast"} <= set(st.databases)
        mode = stat.S_IMODE(os.stat(server.secret_file).st_mode)
        assert mode == 0o600
        with psycopg.connect(st.url) as conn:
            assert conn.execute("select current_database()").fetchone()[0] == "streamflow"
        # a wrong password is refused: the server is not open to anyone on loopback
        bad = st.url.replace(server.password(), "wrong")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(bad, connect_timeout=3)
    finally:
        server.down()


def test_up_twice_is_a_noop_and_keeps_the_same_server(own_settings):
    server = EmbeddedPostgres(own_settings)
    try:
        first = server.up()
        second = server.up()
        assert first.pid == second.pid
    finally:
        server.down()


def test_up_recovers_after_a_crash_left_a_stale_pid_file(own_settings):
    server = EmbeddedPostgres(own_settings)
    try:
        server.up()
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute("create table survivor (x int)")
            conn.execute("insert into survivor values (42)")
        server.kill()
        assert (server.data_dir / "postmaster.pid").exists()
        assert not server.is_running()
        server.up()
        with psycopg.connect(server.url()) as conn:
            assert conn.execute("select x from survivor").fetchone()[0] == 42
    finally:
        server.down()


def test_up_refuses_a_port_taken_by_another_program(own_settings, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", own_settings.pg_port))
        s.listen()
        with pytest.raises(StackError, match="already in use"):
            EmbeddedPostgres(own_settings).up()


def test_cli_status_prints_a_usable_url_and_external_mode_starts_nothing(own_settings, tmp_path):
    run_cli(own_settings, "stack", "up")
    try:
        proc = run_cli(own_settings, "stack", "status", "--json", "--show-secrets")
        info = json.loads(proc.stdout)
        assert info["running"] and info["mode"] == "embedded"
        with psycopg.connect(info["url"]) as conn:
            assert conn.execute("select 1").fetchone()[0] == 1

        # the same commands against an external server: nothing is started or stopped
        external = make_settings(tmp_path / "other_home", database_url=info["url"])  # never started
        ext_status = json.loads(run_cli(external, "stack", "status", "--json").stdout)
        assert ext_status["mode"] == "external" and ext_status["running"]
        run_cli(external, "stack", "up")
        run_cli(external, "stack", "down")
        assert not (tmp_path / "other_home" / "pgdata").exists()
        assert get_stack(own_settings).status().running  # still up: `down` on external stopped nothing
    finally:
        run_cli(own_settings, "stack", "down")
    proc = run_cli(own_settings, "stack", "status", check=False)
    assert proc.returncode == 1
    assert EmbeddedPostgres(own_settings).password() not in proc.stdout + proc.stderr  # down: still masked
    assert "url: postgresql://" in proc.stdout and ":***@" in proc.stdout


def test_status_and_env_mask_the_password_unless_show_secrets_is_given(pg_settings):
    password = EmbeddedPostgres(pg_settings).password()
    for command in (("stack", "status"), ("stack", "status", "--json"), ("stack", "env")):
        masked = run_cli(pg_settings, *command)
        assert password not in masked.stdout + masked.stderr, command
        assert "***" in masked.stdout, command
        shown = run_cli(pg_settings, *command, "--show-secrets")
        assert password in shown.stdout, command
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in run_cli(pg_settings, "stack", "env").stdout.splitlines()
    )
    assert exports["PGPASSWORD"] == exports["STREAMFLOW_PG_PASSWORD"] == "'***'"
    assert ":***@" in exports["STREAMFLOW_WAREHOUSE_URL"] and ":***@" in exports["STREAMFLOW_FEAST_REGISTRY_URL"]
    # with the flag the printed URL connects
    with psycopg.connect(json.loads(run_cli(pg_settings, "stack", "status", "--json", "--show-secrets").stdout)["url"]):
        pass


@pytest.fixture(scope="module")
def one_drop(tmp_path_factory):
    """A valid drop, so that `ingest` gets as far as the database (through the pipeline lock)."""
    out = tmp_path_factory.mktemp("drops")
    generate(out, months=1, users=100, seed=3)
    return next(out.glob("month_*"))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://team:pw-never-shown@127.0.0.1:{port}/streamflow",  # nothing listens there
        "postgresql://team:pw-never-shown@127.0.0.1:notaport/streamflow",  # a mistyped port
        "team:pw-never-shown@127.0.0.1/streamflow",  # no scheme: psycopg echoes the string it got
    ],
)
def test_an_unreachable_external_server_is_reported_without_its_password(tmp_path, url, one_drop):
    settings = make_settings(tmp_path / "home", database_url=url.format(port=free_port()))
    for command in (("stack", "status"), ("stack", "status", "--json"), ("stack", "up"), ("ingest", str(one_drop))):
        proc = run_cli(settings, *command, check=False)
        assert proc.returncode != 0, command
        assert "Traceback" not in proc.stderr, proc.stderr
        assert "pw-never-shown" not in proc.stdout + proc.stderr, (command, proc.stdout, proc.stderr)
