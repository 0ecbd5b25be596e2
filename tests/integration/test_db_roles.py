"""Least privilege in PostgreSQL: the pipeline owns the warehouse, the API's role reads the online store, the
registries and ops and writes only the push tables, `analyst` reads marts and snapshots. Checked on the embedded
stack (a warehouse built before the roles existed, then `stack up`) and on a plain PostgreSQL initialised by the
compose init script, with real statements and PostgreSQL's own "permission denied"."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, date, datetime
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from serving.shadow import UPSERT
from streamflow.core import runlog
from streamflow.core.db import connect, database_url, with_role
from streamflow.core.stack import EmbeddedPostgres, _bin_dir
from streamflow.features import apply, materialize
from streamflow.features.online_store import online_table
from tests.compose_model import ROOT, environment, interpolate, raw_compose, read_env_file
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

JAN = date(2024, 1, 31)
PUSH_ROW = "insert into feast_push.usage_events (user_id, event_timestamp) values ('0000-AAAAA', now())"
MACROS = (ROOT / "dbt_project" / "macros" / "ml_churn_scores.sql").read_text()
ML_TABLES = "".join(  # ml.churn_scores and ml.shadow_scores as every build creates them (plain SQL macros)
    MACROS.split(f"{{% macro {name}() -%}}")[1].split("{%- endmacro %}")[0] + ";"
    for name in ("ensure_churn_scores_table", "ensure_shadow_scores_table")
)


def _shadow_upsert(url: str, probability: float) -> None:
    """The API's own statement (serving.shadow.UPSERT), one row."""
    row = (["0000-AAAAA"], [JAN], [1], [0.5], [2], [probability], ["api"], [datetime.now(UTC)])
    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        conn.execute(UPSERT, row)


def _run(url: str, statement: str) -> list[tuple]:
    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


def _denied(url: str, statement: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
        _run(url, statement)


def _check_api_and_analyst(pipeline: str, api: str, analyst: str) -> None:
    """The same checks on any server: who may read and write what, tables created later included."""
    for table in ("raw.users", "marts.subscriptions_profile"):  # the API never writes the warehouse
        _denied(api, f"insert into {table} default values")
        _denied(api, f"select 1 from {table} limit 1")
    _denied(api, "create table ops.intruder (x int)")
    _run(api, PUSH_ROW)  # ... except the push table
    _denied(api, "delete from feast_push.usage_events")
    for probability in (0.25, 0.75):  # ... and the shadow scores, upserted
        _shadow_upsert(api, probability)
    assert _run(pipeline, "select shadow_probability from ml.shadow_scores where user_id = '0000-AAAAA'") == [(0.75,)]
    _denied(api, "delete from ml.shadow_scores")
    _denied(api, "select 1 from ml.churn_scores limit 1")
    _denied(api, "create table ml.intruder (x int)")
    _run(pipeline, "delete from ml.shadow_scores where user_id = '0000-AAAAA'")
    assert _run(api, "select count(*) from ops.pipeline_runs")[0][0] >= 0
    assert _run(analyst, "select count(*) from marts.subscriptions_profile")[0][0] > 0
    _denied(analyst, "select 1 from raw.users limit 1")
    _denied(analyst, "insert into marts.labels default values")
    _denied(analyst, PUSH_ROW)
    # a table the pipeline (re)creates later, as dbt does on a full refresh, is readable at once
    for _ in range(2):
        _run(pipeline, "drop table if exists marts.recreated; create table marts.recreated as select 1 as x")
        assert _run(analyst, "select x from marts.recreated") == [(1,)]
        _denied(api, "select x from marts.recreated")


def _pipeline_tables(url: str) -> None:
    """What the pipeline creates in an empty warehouse, by its own hand (schemas included)."""
    _run(
        url,
        "create schema if not exists raw; create table raw.users (user_id text);"
        "create schema if not exists marts; create table marts.subscriptions_profile (user_id text);"
        "insert into marts.subscriptions_profile values ('7590-VHVEG'); create table marts.labels (user_id text);"
        "create schema if not exists ops; create table ops.pipeline_runs (pipeline text);"
        "create schema if not exists feast_push;"
        "create table feast_push.usage_events (user_id text not null, event_timestamp timestamptz not null);"
        "create schema if not exists feast_online; create table feast_online.streamflow_usage_realtime (x int);"
        "create table feast_online.streamflow_usage_agg_30d (x int);" + ML_TABLES,
    )


# ---------------------------------------------------------------------------------------------
# the embedded stack
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def roles_warehouse(warehouse_copy, pg_settings, tmp_path_factory):
    """A copy of the built warehouse (made before any role existed), Feast applied and January materialized, then
    `stack up` run with it as the warehouse: the upgrade of an existing warehouse."""
    settings = warehouse_copy("roles_warehouse")
    EmbeddedPostgres(settings).up()
    with connect(settings, autocommit=True) as conn:  # the run log, created by the pipeline's first run
        runlog.ensure_schema(conn)
    apply.apply(settings)  # after the roles: the online tables get their grants when created
    materialize.materialize(settings, JAN)
    return settings


def test_the_api_role_is_refused_the_warehouse_and_reads_online_and_writes_the_push_table(roles_warehouse):
    settings = roles_warehouse
    pipeline, api, analyst = (database_url(with_role(settings, r)) for r in ("pipeline", "api", "analyst"))
    assert _run(api, "select current_user") == [("streamflow_api",)]
    _check_api_and_analyst(pipeline, api, analyst)
    usage = online_table(settings, "usage_agg_30d")
    push = online_table(settings, "usage_realtime")
    assert _run(api, f"select count(*) from {usage}")[0][0] > 0  # the online store, materialized before the grants
    _denied(api, f"delete from {usage}")
    _denied(api, f"insert into {usage} (entity_key, feature_name) values ('\\x00', 'x')")
    _run(api, f"insert into {push} (entity_key, feature_name, event_ts) values ('\\x00', 'x', now())")
    _run(api, f"update {push} set event_ts = now() where entity_key = '\\x00'")
    for db in (settings.feast_registry_db, settings.mlflow_db):  # the registries: read, never written
        registry = EmbeddedPostgres(with_role(settings, "api")).url(db)
        tables = [r[0] for r in _run(registry, "select tablename from pg_tables where schemaname = 'public'")]
        if tables:
            _run(registry, f'select count(*) from public."{tables[0]}"')
            _denied(registry, f'delete from public."{tables[0]}"')
        _denied(registry, "create table public.intruder (x int)")


def test_stack_up_gives_each_role_a_private_password_and_rotates_it(roles_warehouse):
    server = EmbeddedPostgres(roles_warehouse)
    for role in ("streamflow_api", "analyst"):
        secret = server.secret_file_of(role)
        assert secret.stat().st_mode & 0o777 == 0o600
        old_url = EmbeddedPostgres(with_role(roles_warehouse, "api" if role != "analyst" else "analyst")).url()
        secret.unlink()  # rotation: a new password on the next `stack up`, the old one refused
        server.up()
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(old_url, connect_timeout=5)
        new_url = old_url.replace(urlsplit(old_url).password, server.password(role))
        assert _run(new_url, "select current_user") == [(role,)]
    flags = _run(server.admin_url(), "select rolsuper, rolcreatedb from pg_roles where rolname like 'analyst'")
    assert flags == [(False, False)]


def test_an_empty_embedded_warehouse_grants_schemas_the_pipeline_creates_later(own_home):
    settings = make_settings(own_home)
    EmbeddedPostgres(settings).up()
    try:
        pipeline, api, analyst = (database_url(with_role(settings, r)) for r in ("pipeline", "api", "analyst"))
        _pipeline_tables(pipeline)
        _check_api_and_analyst(pipeline, api, analyst)
    finally:
        EmbeddedPostgres(settings).down()


# ---------------------------------------------------------------------------------------------
# compose: the init script on a plain PostgreSQL
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose_urls(tmp_path_factory):
    """The compose URLs of the pipeline (job), the API and the analyst, on a plain PostgreSQL (superuser
    `postgres` only) that ops/postgres/init-databases.sh initialised with the compose postgres environment."""
    env_file = tmp_path_factory.mktemp("env") / ".env"
    subprocess.run(["bash", str(ROOT / "ops/scripts/init-env.sh"), str(env_file)], check=True, capture_output=True)
    values = read_env_file(env_file)
    rendered = interpolate(raw_compose(), values)["services"]
    settings = make_settings(
        tmp_path_factory.mktemp("pg"),
        pg_user="postgres",
        warehouse_db="postgres",
        mlflow_db="postgres",
        airflow_db="postgres",
        feast_registry_db="postgres",
    )
    server = EmbeddedPostgres(settings)
    server.up(roles=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(environment(rendered["postgres"]))
    assert env["GRANTS_SQL_DIR"] == "/opt/streamflow/postgres"  # where compose mounts ops/postgres
    env["GRANTS_SQL_DIR"] = str(ROOT / "ops/postgres")
    env.update(
        PATH=f"{_bin_dir()}:{env['PATH']}",
        PGHOST=settings.pg_host,
        PGPORT=str(settings.pg_port),
        PGPASSWORD=server.password(),
    )
    script = ROOT / "ops/postgres/init-databases.sh"
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert values["API_DB_PASSWORD"] not in proc.stdout + proc.stderr

    def local(url: str) -> str:
        url = url.replace("+psycopg", "").replace("@postgres:5432", f"@{settings.pg_host}:{settings.pg_port}")
        return url

    analyst = f"postgresql://analyst:{values['ANALYST_DB_PASSWORD']}@postgres:5432/warehouse"
    urls = {
        "pipeline": local(environment(rendered["job"])["STREAMFLOW_DATABASE_URL"]),
        "api": local(environment(rendered["api"])["STREAMFLOW_DATABASE_URL"]),
        "api_registry": local(environment(rendered["api"])["STREAMFLOW_FEAST_REGISTRY_URL"]),
        "feast": local(environment(rendered["job"])["STREAMFLOW_FEAST_REGISTRY_URL"]),
        "analyst": local(analyst),
    }
    yield urls
    server.down()


def test_compose_init_script_gives_the_api_and_analyst_the_same_privileges(compose_urls):
    urls = compose_urls
    assert _run(urls["pipeline"], "select current_user, rolsuper from pg_roles where rolname = current_user") == [
        ("streamflow", False)
    ]
    assert _run(urls["api"], "select current_user") == [("streamflow_api",)]
    _pipeline_tables(urls["pipeline"])
    _check_api_and_analyst(urls["pipeline"], urls["api"], urls["analyst"])
    _run(urls["api"], "insert into feast_online.streamflow_usage_realtime values (1)")
    _denied(urls["api"], "insert into feast_online.streamflow_usage_agg_30d values (1)")
    # the Feast registry (owned by `feast`): the API reads tables created later, writes none
    _run(urls["feast"], "create table public.feast_metadata (k text)")
    assert _run(urls["api_registry"], "select count(*) from public.feast_metadata") == [(0,)]
    _denied(urls["api_registry"], "insert into public.feast_metadata values ('x')")
    analyst_elsewhere = urlunsplit(urlsplit(urls["analyst"])._replace(path="/feast"))
    with pytest.raises(psycopg.OperationalError, match="permission denied|CONNECT privilege"):
        psycopg.connect(analyst_elsewhere, connect_timeout=5)
