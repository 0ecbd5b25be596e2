"""The feature store on a real built warehouse: point-in-time correctness against hand-written SQL,
materialization and the online store (PostgreSQL and Redis), push, idempotency, dbt/Feast agreement.

One copy of the session's built warehouse (3 months, 500 users) serves the module; every scenario
that changes the online store uses its own Feast project (own registry entries, own online tables).
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import shutil
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from streamflow import pipeline
from streamflow.core import names
from streamflow.core.db import connect
from streamflow.core.env import tool_environment
from streamflow.core.names import FEATURE_MARTS
from streamflow.core.stack import EmbeddedPostgres
from streamflow.features import apply, columnar_read, materialize, offline, online_store, push, read_paths, store
from streamflow.features import contract as fc
from streamflow.features import online as online_reads
from tests.conftest import free_port, run_cli, settings_env

pytestmark = pytest.mark.integration

JAN, FEB, MAR = date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31)
TTL = timedelta(days=35)
REGISTRY_DB = "features_registry"


def flat(text: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(text.split())


def ts(day: date, **delta) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(**delta)


# ---------------------------------------------------------------------------------------
# fixtures: one warehouse copy, one registry database, a Feast project per scenario
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_settings(warehouse_copy):
    settings = warehouse_copy("features_wh")
    with psycopg.connect(EmbeddedPostgres(settings).url("postgres"), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{REGISTRY_DB}" with (force)')
        conn.execute(f'create database "{REGISTRY_DB}"')
    return settings.model_copy(update={"feast_registry_db": REGISTRY_DB})


def project(base, name: str, **overrides):
    return base.model_copy(update={"feast_project": name, **overrides})


@pytest.fixture(scope="module")
def applied(base_settings):
    """Project `features`: applied, nothing materialized (offline retrieval)."""
    settings = project(base_settings, "features")
    apply.apply(settings)
    return settings


@pytest.fixture(scope="module")
def online(base_settings):
    """Project `features_online`: applied, January then February materialized."""
    settings = project(base_settings, "features_online")
    apply.apply(settings)
    materialize.materialize(settings, JAN)
    result = materialize.materialize(settings, FEB)
    return settings, result


@pytest.fixture(scope="module")
def people(base_settings):
    """Users by history: stayers (active Jan, Feb, Mar), leavers (active Jan only), joiners (first active Feb)."""
    relation = "marts.subscriptions_profile"
    with connect(base_settings) as conn:
        rows = conn.execute(f"select user_id, array_agg((as_of at time zone 'UTC')::date) from {relation} group by 1")
        months = {user: set(days) for user, days in rows}
    stayers = sorted(u for u, m in months.items() if m == {JAN, FEB, MAR})
    leavers = sorted(u for u, m in months.items() if m == {JAN})
    joiners = sorted(u for u, m in months.items() if min(m) == FEB)
    assert stayers and leavers and joiners, "the generated history holds each kind of user"
    return {"stayers": stayers, "leavers": leavers, "joiners": joiners, "months": months}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A real redis-server on a free port in a temporary directory."""
    import redis

    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed (installed by `make sysdeps`)"
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "", "--appendonly", "no"],
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
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=20)


# ---------------------------------------------------------------------------------------
# the hand-written reference: an as-of join on the marts in plain SQL
# ---------------------------------------------------------------------------------------
def _contract_columns(settings) -> dict[str, list[str]]:
    manifest = fc.load_manifest(fc.ensure_manifest(settings))
    return {m: [c for c, _t in fc.mart_contract(manifest, m).features] for m in FEATURE_MARTS}


def sql_as_of_join(settings, entities_sql: str, columns: list[str], *, leaky: bool = False) -> pd.DataFrame:
    """For each entity row (user_id, event_timestamp, extra...) and each mart: the latest row with as_of
    at or before the timestamp and at most 35 days older (the month-end TTL). ``leaky``: the first row
    after the timestamp instead (features from the month after), which a correct join must not match."""
    marts = _contract_columns(settings)
    if leaky:
        window, order = "m.as_of > e.event_timestamp", "m.as_of asc"
    else:
        window, order = (
            "m.as_of <= e.event_timestamp and m.as_of >= e.event_timestamp - interval '35 days'",
            ("m.as_of desc"),
        )
    joins, selects = [], []
    for alias, mart in (
        ("sp", "subscriptions_profile"),
        ("ua", "usage_agg_30d"),
        ("pa", "payments_agg_90d"),
        ("sa", "support_agg_90d"),
    ):
        cols = ", ".join(f"m.{c}" for c in marts[mart])
        joins.append(
            f"left join lateral (select {cols} from marts.{mart} m where m.user_id = e.user_id "
            f"and {window} order by {order} limit 1) {alias} on true"
        )
        selects += [f"{alias}.{c}" for c in marts[mart]]
    selects += [
        "sp.monthly_fee / greatest(sp.months_active, 1) as fee_per_active_month",
        "ua.watch_hours_30d / greatest(ua.unique_devices_30d, 1) as watch_hours_per_device",
        "sa.support_tickets_90d::float8 / least(greatest(sp.months_active, 1), 3) as tickets_per_active_month",
    ]
    query = f"select e.*, {', '.join(selects)} from ({entities_sql}) e " + " ".join(joins)
    with connect(settings) as conn:
        cur = conn.execute(query)
        frame = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
    frame = frame.rename(columns={"event_timestamp": "as_of"})
    frame["as_of"] = pd.to_datetime(frame["as_of"], utc=True)
    lead = [c for c in ("user_id", "as_of", "churn_label") if c in frame.columns]
    return frame[lead + columns].sort_values(["as_of", "user_id"], kind="mergesort").reset_index(drop=True)


def _plain(value):
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    return value


def differences(left: pd.DataFrame, right: pd.DataFrame) -> list[str]:
    """Every (row, column) where two frames differ, value for value; also a row-count or column mismatch."""
    if list(left.columns) != list(right.columns):
        return [f"columns differ: {list(left.columns)} != {list(right.columns)}"]
    if len(left) != len(right):
        return [f"row counts differ: {len(left)} != {len(right)}"]
    out = []
    for col in left.columns:
        for i, (a, b) in enumerate(zip(left[col].tolist(), right[col].tolist(), strict=True)):
            a, b = _plain(a), _plain(b)
            if a != b:
                out.append(f"row {i} ({left['user_id'][i]}, {left['as_of'][i]}) {col}: {a!r} != {b!r}")
    return out


def labels_sql(periods: list[date]) -> str:
    stamps = ", ".join(f"'{ts(p).isoformat()}'::timestamptz" for p in periods)
    return (
        "select user_id, period_start as event_timestamp, churn_label from marts.labels "
        f"where period_start in ({stamps})"
    )


# ---------------------------------------------------------------------------------------
# dbt contracts and Feast agree
# ---------------------------------------------------------------------------------------
def test_feature_views_agree_with_the_dbt_contracts_and_the_warehouse(applied):
    feast_store = store.feature_store(applied)
    manifest = fc.load_manifest(fc.ensure_manifest(applied))
    views = feast_store.list_feature_views()
    assert fc.disagreements(views, manifest) == []
    # the contracts are enforced: the live tables carry the same names and types
    with connect(applied) as conn:
        for mart in FEATURE_MARTS:
            live = conn.execute(
                "select column_name, data_type from information_schema.columns where table_schema = 'marts' "
                "and table_name = %s order by ordinal_position",
                (mart,),
            ).fetchall()
            view = next(v for v in views if v.name == mart)
            declared = {f.name: fc.type_name(f.dtype) for f in view.features}
            assert {c: fc.feast_type_name(t) for c, t in live if c in declared} == declared


def test_a_contract_change_is_reported_as_a_disagreement(applied):
    feast_store = store.feature_store(applied)
    manifest = copy.deepcopy(fc.load_manifest(fc.ensure_manifest(applied)))
    nodes = manifest["nodes"]
    nodes["model.streamflow.usage_agg_30d"]["columns"]["watch_hours_30d"]["data_type"] = "bigint"
    del nodes["model.streamflow.usage_agg_30d"]["columns"]["skips_7d"]
    nodes["model.streamflow.payments_agg_90d"]["columns"]["payments_attempted_90d"] = {"data_type": "bigint"}
    problems = fc.disagreements(feast_store.list_feature_views(), manifest)
    assert len(problems) == 3, problems
    assert any("usage_agg_30d.watch_hours_30d: Feast type Float64, dbt contract Int64" in p for p in problems)
    assert any("usage_agg_30d.skips_7d: in the feature view, not in the dbt contract" in p for p in problems)
    assert any("payments_agg_90d.payments_attempted_90d: in the dbt contract" in p for p in problems)


def test_feature_store_yaml_and_the_python_configuration_agree(applied):
    """The `feast` CLI (feature_store.yaml with ${VAR}s) and feature_store(settings) use the same stores."""
    import os

    from feast.repo_config import load_repo_config

    env = tool_environment(applied)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yaml_config = load_repo_config(applied.feature_repo_dir, applied.feature_repo_dir / "feature_store.yaml")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    ours = store.repo_config(applied)
    assert yaml_config.project == ours.project == "features"
    assert yaml_config.registry.path == ours.registry.path
    assert yaml_config.registry.registry_type == ours.registry.registry_type == "sql"
    for part in ("offline_store", "online_store"):
        a, b = getattr(yaml_config, part), getattr(ours, part)
        assert a.model_dump() == b.model_dump(), part
    assert yaml_config.entity_key_serialization_version == ours.entity_key_serialization_version


def test_the_feast_cli_sees_the_applied_repo_unchanged(applied):
    env = {**settings_env(applied), **tool_environment(applied)}
    feast = str(Path(sys.executable).with_name("feast"))
    proc = subprocess.run(
        [feast, "plan"], cwd=applied.feature_repo_dir, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert "No changes to registry" in proc.stdout, proc.stdout


# ---------------------------------------------------------------------------------------
# offline: point-in-time correctness
# ---------------------------------------------------------------------------------------
def test_model_features_are_churn_model_v1_in_contract_order(applied):
    names = store.model_features(applied)
    marts = _contract_columns(applied)
    expected = (
        [c for c in marts["subscriptions_profile"] if c != "gender"]
        + marts["usage_agg_30d"]
        + marts["payments_agg_90d"]
        + marts["support_agg_90d"]
        + ["fee_per_active_month", "watch_hours_per_device", "tickets_per_active_month"]
    )
    assert names == expected
    everything = [n for _v, n in store.service_features(applied, "customer_360")]
    assert len(everything) == len(set(everything)), "plain feature names are unique across views"
    assert set(names) < set(everything) and {"gender", "watch_minutes_today", "last_session_at"} <= set(everything)


def test_training_frame_equals_a_hand_written_as_of_join_row_for_row(applied, people):
    frame = offline.training_frame(applied, [JAN, FEB])
    reference = sql_as_of_join(applied, labels_sql([JAN, FEB]), store.model_features(applied))
    assert differences(frame, reference) == []
    # one row per labelled user and period, labels as booleans, as_of = the period at 00:00 UTC
    assert str(frame["as_of"].dt.tz) == "UTC" and frame["churn_label"].dtype == bool
    assert set(frame["as_of"]) == {pd.Timestamp(ts(JAN)), pd.Timestamp(ts(FEB))}
    assert not frame.duplicated(["user_id", "as_of"]).any()
    # the history's edge cases are in it: a joiner has only February rows, a leaver only January ones
    joiner, leaver = people["joiners"][0], people["leavers"][0]
    assert set(frame.loc[frame.user_id == joiner, "as_of"]) == {pd.Timestamp(ts(FEB))}
    assert set(frame.loc[frame.user_id == leaver, "as_of"]) == {pd.Timestamp(ts(JAN))}
    assert frame.loc[frame.user_id == leaver, "churn_label"].item() is True
    assert frame[store.model_features(applied)].notna().all().all()


def test_a_leaky_join_with_next_months_features_differs(applied):
    frame = offline.training_frame(applied, [JAN, FEB])
    leaky = sql_as_of_join(applied, labels_sql([JAN, FEB]), store.model_features(applied), leaky=True)
    rows = {d.split(" ")[1] for d in differences(frame, leaky)}
    assert len(rows) > len(frame) / 2, f"only {len(rows)} of {len(frame)} rows differ"


def test_point_in_time_join_handles_absence_late_joiners_and_the_ttl_edge(applied, people):
    leaver, joiner, stayer = people["leavers"][0], people["joiners"][0], people["stayers"][0]
    rows = [
        (leaver, ts(JAN)),
        (leaver, ts(FEB)),  # absent in February: January's value is within its TTL (29 days)
        (leaver, ts(JAN) + TTL),  # the TTL edge: still served
        (leaver, ts(JAN) + TTL + timedelta(seconds=1)),  # one second later: nothing
        (leaver, ts(MAR)),
        (joiner, ts(JAN)),  # before the user joined: nothing
        (joiner, ts(FEB) - timedelta(seconds=1)),
        (joiner, ts(FEB)),
        (stayer, ts(FEB, hours=12)),  # between month ends: the latest month end
        (stayer, ts(MAR)),
    ]
    entities = pd.DataFrame(rows, columns=["user_id", "event_timestamp"])
    values_sql = " union all ".join(
        f"select '{u}'::text as user_id, '{t.isoformat()}'::timestamptz as event_timestamp" for u, t in rows
    )
    names = store.model_features(applied)
    raw = offline.historical_features(applied, entities).rename(columns={"event_timestamp": "as_of"})
    raw["as_of"] = pd.to_datetime(raw["as_of"], utc=True)
    frame = raw[["user_id", "as_of", *names]].sort_values(["as_of", "user_id"], kind="mergesort").reset_index(drop=True)
    reference = sql_as_of_join(applied, values_sql, names)
    assert differences(frame, reference) == []

    def fee(user, when):
        return _plain(frame.loc[(frame.user_id == user) & (frame.as_of == pd.Timestamp(when)), "monthly_fee"].item())

    with connect(applied) as conn:
        mart_fee = dict(
            ((u, d), f)
            for u, d, f in conn.execute(
                "select user_id, (as_of at time zone 'UTC')::date, monthly_fee from marts.subscriptions_profile "
                "where user_id = any(%s)",
                ([leaver, joiner, stayer],),
            )
        )
    assert fee(leaver, ts(FEB)) == fee(leaver, ts(JAN) + TTL) == mart_fee[(leaver, JAN)]
    assert fee(leaver, ts(JAN) + TTL + timedelta(seconds=1)) is None and fee(leaver, ts(MAR)) is None
    assert fee(joiner, ts(JAN)) is None and fee(joiner, ts(FEB) - timedelta(seconds=1)) is None
    assert fee(joiner, ts(FEB)) == mart_fee[(joiner, FEB)]
    assert fee(stayer, ts(FEB, hours=12)) == mart_fee[(stayer, FEB)] and fee(stayer, ts(MAR)) == mart_fee[(stayer, MAR)]
    empty = frame[(frame.user_id == leaver) & (frame.as_of == pd.Timestamp(ts(MAR)))][names]
    assert empty.isna().all().all(), "no feature of any view is served past its TTL"


def test_feature_frame_holds_every_active_user_with_the_model_features(applied, people):
    frame = offline.feature_frame(applied, MAR)
    assert list(frame.columns) == ["user_id", "as_of"] + store.model_features(applied)
    active = sorted(u for u, m in people["months"].items() if MAR in m)
    assert frame["user_id"].tolist() == active
    assert (frame["as_of"] == pd.Timestamp(ts(MAR))).all()
    entities = f"select user_id, as_of as event_timestamp from marts.subscriptions_profile where as_of = '{ts(MAR)}'"
    assert differences(frame, sql_as_of_join(applied, entities, store.model_features(applied))) == []


def test_unknown_periods_and_services_are_clear_errors(applied):
    with pytest.raises(
        store.FeaturesError,
        match=r"no labels for period\(s\) 2024-03-31; labelled periods: "
        r"2024-01-31, 2024-02-29",
    ):
        offline.training_frame(applied, [MAR])
    with pytest.raises(
        store.FeaturesError, match="unknown feature service 'nope'; known: churn_model_v1, customer_360"
    ):
        offline.feature_frame(applied, FEB, service="nope")
    with pytest.raises(store.FeaturesError, match="the marts hold no month 2024-04-30"):
        offline.feature_frame(applied, date(2024, 4, 30))


# ---------------------------------------------------------------------------------------
# online (PostgreSQL online store)
# ---------------------------------------------------------------------------------------
def _mart_row(settings, mart: str, user: str, day: date) -> dict:
    with connect(settings) as conn:
        cur = conn.execute(f"select * from marts.{mart} where user_id = %s and as_of = %s", (user, ts(day)))
        row = cur.fetchone()
        return dict(zip([d.name for d in cur.description], row, strict=True)) if row else {}


def test_after_materializing_a_month_active_users_get_that_months_values(online, people):
    settings, result = online
    assert result.business_clock == ts(FEB) == store.business_clock(settings)
    for user in people["stayers"][:3] + people["joiners"][:2]:
        got = online_reads.online_features(settings, user)
        assert got.found
        for mart in FEATURE_MARTS:
            assert got.as_of[mart] == ts(FEB)
            expected = _mart_row(settings, mart, user, FEB)
            for name in _contract_columns(settings)[mart]:
                assert got.values[name] == expected[name], (user, mart, name)
        assert got.values["fee_per_active_month"] == expected_fee_ratio(settings, user, FEB)


def expected_fee_ratio(settings, user, day):
    row = _mart_row(settings, "subscriptions_profile", user, day)
    return row["monthly_fee"] / max(row["months_active"], 1)


def test_the_online_store_holds_exactly_the_users_active_at_the_month(online, people):
    settings, result = online
    active = {u for u, m in people["months"].items() if FEB in m}
    for mart in FEATURE_MARTS:
        assert online_store.online_entities(settings, mart) == active, mart
        assert result.online_users[mart] == len(active)
        assert result.removed[mart] == len([u for u, m in people["months"].items() if JAN in m and FEB not in m])


def test_a_user_who_cancelled_is_not_served_as_current(online, people):
    settings, _ = online
    got = online_reads.online_features(settings, people["leavers"][0])
    assert not got.found
    assert all(v is None for v in got.values.values())


def _read_users(people) -> list[str]:
    """Stayers, joiners, a leaver (not online), an unknown id and a repeated id: every shape of a read."""
    return [*people["stayers"][:4], *people["joiners"][:2], people["leavers"][0], "nobody-at-all", people["stayers"][0]]


def test_the_columnar_read_answers_exactly_what_feasts_own_read_answers(online, people):
    settings, _ = online
    reader = online_reads.OnlineReader(settings)
    catalog = reader.refresh()
    feast_store = reader.feature_store()
    online_store_ = feast_store._get_provider().online_store
    assert isinstance(online_store_, columnar_read.StreamflowColumnarOnlineStore)
    users = _read_users(people)
    for service in (reader.model_service, reader.all_service):
        assert asyncio.run(reader.read_async(users, service)) is None, "not before the snapshot's first read"
        layout = catalog.services[service]
        plan = columnar_read.ColumnarRead(feast_store, layout.stored_refs, names.ENTITY)
        mine = online_store_.read_columns(feast_store.config, plan, users)
        feast = feast_store.get_online_features(
            features=list(layout.stored_refs), entity_rows=[{names.ENTITY: u} for u in users]
        ).to_dict(include_event_timestamps=True)
        assert mine.keys() == feast.keys()
        for column, values in feast.items():
            assert read_paths.same(values, mine[column]), column
        for column, values in mine.items():  # the leaver and the unknown id: absent; the repeat: the first
            absent = 0 if column.endswith("__ts") else None
            assert column.startswith(names.ENTITY) or values[6] == values[7] == absent, column
            assert values[8] == values[0], column
        # the reader checks it on a snapshot's first read, then answers from it: the same judged rows
        first, _ = reader.read(users, service)
        assert reader._columnar[service] is not None, "the columnar read agreed and is used"
        second, _ = reader.read(users, service)
        on_the_loop, judged_with = asyncio.run(reader.read_async(users, service))  # the API's /predict read
        assert judged_with is catalog
        for rows in (second, on_the_loop):
            assert [(r.user_id, r.values, r.as_of, r.verdict) for r in first] == [
                (r.user_id, r.values, r.as_of, r.verdict) for r in rows
            ]
    reader.stop()


def test_a_read_on_the_event_loop_that_the_store_stalls_is_a_503_and_the_next_one_reconnects(online, people):
    settings, _ = online
    reader = online_reads.OnlineReader(settings.model_copy(update={"online_timeout_seconds": 1.0}))
    reader.refresh()
    users = people["stayers"][:2]
    expected, _ = reader.read(users, reader.model_service)  # checks the snapshot's columnar read
    table = online_store.online_table(settings, "subscriptions_profile")
    with connect(settings) as locker:  # a stalled store: a lock the read waits on
        locker.execute(f"lock table {table} in access exclusive mode")
        started = time.monotonic()
        with pytest.raises(online_reads.StoreUnavailable) as refused:
            asyncio.run(reader.read_async(users, reader.model_service))
        waited = time.monotonic() - started
        assert refused.value.store == online_reads.ONLINE and "did not answer" in str(refused.value)
        assert waited < 3, f"bounded by the online timeout, waited {waited:.1f} s"
        assert not reader.online_ok
        assert reader._columnar[reader.model_service] is not None  # the plan stays; the connection went
        assert reader.feature_store()._get_provider().online_store._conn_async is None
    time.sleep(online_reads.RETRY_PAUSE_SECONDS)
    rows, _ = asyncio.run(reader.read_async(users, reader.model_service))
    assert [(r.user_id, r.values) for r in rows] == [(r.user_id, r.values) for r in expected]
    assert reader.online_ok
    reader.stop()


def test_a_columnar_read_that_differs_from_feasts_is_not_used(online, people, monkeypatch):
    settings, _ = online
    honest = columnar_read.ColumnarRead.read
    stayer = people["stayers"][0]

    def off_by_one(self, conn, user_ids):
        out = honest(self, conn, user_ids)
        out["monthly_fee"] = [v + 1.0 if v is not None else v for v in out["monthly_fee"]]
        return out

    monkeypatch.setattr(columnar_read.ColumnarRead, "read", off_by_one)
    reader = online_reads.OnlineReader(settings)
    reader.refresh()
    for _ in range(3):
        (row,), _catalog = reader.read([stayer], reader.model_service)
        assert row.values["monthly_fee"] == _mart_row(settings, "subscriptions_profile", stayer, FEB)["monthly_fee"]
    assert reader._columnar[reader.model_service] is None
    assert asyncio.run(reader.read_async([stayer], reader.model_service)) is None, "so none on the event loop"
    reader.stop()


def _online_snapshot(settings) -> dict:
    out = {}
    with connect(settings) as conn:
        for view in (*FEATURE_MARTS, names.PUSH_VIEW):
            table = online_store.online_table(settings, view)
            out[view] = conn.execute(
                f"select entity_key, feature_name, value, event_ts, created_ts from {table} order by 1, 2"
            ).fetchall()
    return out


def _registry_snapshot(settings) -> dict:
    feast_store = store.feature_store(settings)
    feast_store.refresh_registry()
    out = {}
    for fv in feast_store.list_feature_views():
        out[f"fv:{fv.name}"] = (
            fv.to_proto().spec.SerializeToString(),
            fv.last_updated_timestamp,
            [(i[0], i[1]) for i in fv.materialization_intervals],
        )
    for fs in feast_store.list_feature_services():
        out[f"fs:{fs.name}"] = (fs.to_proto().spec.SerializeToString(), fs.last_updated_timestamp)
    for odfv in feast_store.list_on_demand_feature_views():
        spec = odfv.to_proto().spec
        spec.feature_transformation.user_defined_function.ClearField("body")  # dill bytes of the function
        out[f"odfv:{odfv.name}"] = spec.SerializeToString()
    return out


def test_rerunning_apply_and_materialize_changes_nothing(online):
    settings, _ = online
    online_before, registry_before = _online_snapshot(settings), _registry_snapshot(settings)
    assert apply.apply(settings).unchanged
    again = materialize.materialize(settings, FEB)
    assert sorted(again.skipped) == sorted(FEATURE_MARTS)
    assert set(again.removed.values()) == {0}
    assert _online_snapshot(settings) == online_before
    assert _registry_snapshot(settings) == registry_before


def test_materializing_an_older_or_unbuilt_month_is_refused(online):
    settings, _ = online
    with pytest.raises(store.FeaturesError, match="already serves 2024-02-29; materializing the older month"):
        materialize.materialize(settings, JAN)
    with pytest.raises(
        store.FeaturesError,
        match=r"month 2024-04-30 is not built \(built months: 2024-01-31, "
        r"2024-02-29, 2024-03-31\)",
    ):
        materialize.materialize(settings, date(2024, 4, 30))


def test_materialize_before_apply_is_a_clear_error(base_settings):
    settings = project(base_settings, "features_unapplied")
    with pytest.raises(store.FeaturesError, match="run `streamflow features apply` first"):
        materialize.materialize(settings, JAN)
    assert store.business_clock(settings) is None


def test_the_scheduled_materialization_loads_the_newest_built_month_once(base_settings, people):
    # streamflow_materialize (every 30 minutes) calls this with no month.
    settings = project(base_settings, "features_newest")
    apply.apply(settings)
    first = pipeline.materialize_newest(settings)
    assert first["as_of"] == MAR.isoformat() and first["skipped"] == []
    active = len([u for u, m in people["months"].items() if MAR in m])
    assert {first["online_users"][mart] for mart in FEATURE_MARTS} == {active}
    assert online_reads.online_features(settings, people["stayers"][0]).as_of["usage_agg_30d"] == ts(MAR)
    again = pipeline.materialize_newest(settings)
    assert sorted(again["skipped"]) == sorted(FEATURE_MARTS) and set(again["removed"].values()) == {0}


def test_the_scheduled_materialization_skips_while_nothing_is_built(base_settings):
    empty = base_settings.model_copy(update={"warehouse_db": "features_unbuilt", "feast_project": "features_unbuilt"})
    with psycopg.connect(EmbeddedPostgres(base_settings).url("postgres"), autocommit=True) as conn:
        conn.execute('drop database if exists "features_unbuilt" with (force)')
        conn.execute('create database "features_unbuilt"')
    assert materialize.built_months(empty) == []
    with pytest.raises(pipeline.NothingToDo, match="no month is built yet"):
        pipeline.materialize_newest(empty)


def test_apply_before_the_marts_exist_is_a_clear_error(base_settings):
    empty = base_settings.model_copy(update={"warehouse_db": "features_empty", "feast_project": "features_empty"})
    with psycopg.connect(EmbeddedPostgres(base_settings).url("postgres"), autocommit=True) as conn:
        conn.execute('drop database if exists "features_empty" with (force)')
        conn.execute('create database "features_empty"')
    with pytest.raises(store.FeaturesError, match="do not exist yet: run `streamflow ingest` and `streamflow build`"):
        apply.apply(empty)


def test_force_rewrites_a_month_that_is_already_online(base_settings, people):
    settings = project(base_settings, "features_force")
    apply.apply(settings)
    materialize.materialize(settings, JAN)
    user = people["stayers"][0]
    table = online_store.online_table(settings, "subscriptions_profile")
    with connect(settings) as conn:  # the month was rebuilt: what is online is no longer the mart's value
        conn.execute(f"delete from {table} where entity_key = %s", (online_store.entity_key_bytes(user),))
        conn.commit()
    assert not online_reads.online_features(settings, user).as_of["subscriptions_profile"]
    assert materialize.materialize(settings, JAN).skipped == list(FEATURE_MARTS)
    result = materialize.materialize(settings, JAN, force=True)
    assert result.skipped == [] and result.online_users["subscriptions_profile"] == len(
        [u for u, m in people["months"].items() if JAN in m]
    )
    assert online_reads.online_features(settings, user).as_of["subscriptions_profile"] == ts(JAN)


# ---------------------------------------------------------------------------------------
# push
# ---------------------------------------------------------------------------------------
def test_a_push_is_served_at_once_and_survives_the_next_materialization(base_settings, people):
    settings = project(base_settings, "features_push")
    apply.apply(settings)
    materialize.materialize(settings, JAN)
    stayer, leaver = people["stayers"][1], people["leavers"][1]
    at = ts(FEB, days=-19, hours=20)  # 2024-02-10 20:00
    pushed = push.push_usage_event(settings, stayer, watch_minutes_today=42.5, last_session_at=at)
    assert pushed.online and pushed.event_time == at
    got = online_reads.online_features(settings, stayer)
    assert got.values["watch_minutes_today"] == 42.5 and got.as_of[names.PUSH_VIEW] == at
    assert got.values["last_session_at"] == at
    assert got.as_of["subscriptions_profile"] == ts(JAN), "the monthly views are untouched by a push"
    # an older event is history, not the current value
    older = push.push_usage_event(settings, stayer, watch_minutes_today=5.0, last_session_at=at - timedelta(days=1))
    assert not older.online
    assert online_reads.online_features(settings, stayer).values["watch_minutes_today"] == 42.5
    push.push_usage_event(settings, leaver, watch_minutes_today=3.0, last_session_at=ts(JAN, days=2))
    with connect(settings) as conn:
        logged = conn.execute(
            "select user_id, watch_minutes_today from feast_push.usage_events where user_id = any(%s) "
            "order by event_timestamp",
            ([stayer, leaver],),
        ).fetchall()
    assert logged == [(leaver, 3.0), (stayer, 5.0), (stayer, 42.5)]

    result = materialize.materialize(settings, FEB)
    got = online_reads.online_features(settings, stayer)
    assert got.values["watch_minutes_today"] == 42.5 and got.as_of[names.PUSH_VIEW] == at
    assert got.as_of["subscriptions_profile"] == ts(FEB)
    assert not online_reads.online_features(settings, leaver).found, "a user who left loses pushed values too"
    assert result.removed[names.PUSH_VIEW] == 1
    assert online_store.online_entities(settings, names.PUSH_VIEW) == {stayer}
    # the offline history serves point-in-time too (customer_360 includes the pushed view)
    hist = offline.historical_features(
        settings, pd.DataFrame({"user_id": [stayer], "event_timestamp": [at + timedelta(hours=1)]}), "customer_360"
    )
    assert hist["watch_minutes_today"].tolist() == [42.5]


def test_a_bad_push_is_refused_with_a_clear_message(applied):
    with pytest.raises(store.FeaturesError, match="not a user id"):
        push.push_usage_event(applied, "nobody", watch_minutes_today=1, last_session_at=ts(FEB))
    with pytest.raises(store.FeaturesError, match="between 0 and 1440"):
        push.push_usage_event(applied, "0001-ABCDE", watch_minutes_today=-3, last_session_at=ts(FEB))


# ---------------------------------------------------------------------------------------
# Redis online store
# ---------------------------------------------------------------------------------------
def _redis_snapshot(redis_url: str) -> dict:
    import redis

    host, port = redis_url.split(":")
    client = redis.Redis(host=host, port=int(port))
    return {key: client.hgetall(key) for key in sorted(client.scan_iter(count=1000))}


def test_redis_online_store_round_trip(base_settings, people, redis_url):
    settings = project(base_settings, "features_redis", online_store="redis", redis_url=redis_url)
    apply.apply(settings)
    assert store.feature_store(settings).config.online_store.type == "redis"
    materialize.materialize(settings, JAN)
    stayer, leaver, joiner = people["stayers"][2], people["leavers"][2], people["joiners"][2]
    at = ts(FEB, days=-5)
    assert push.push_usage_event(settings, stayer, watch_minutes_today=12.0, last_session_at=at).online
    push.push_usage_event(settings, leaver, watch_minutes_today=7.0, last_session_at=ts(JAN, days=3))
    result = materialize.materialize(settings, FEB)

    active = {u for u, m in people["months"].items() if FEB in m}
    for mart in FEATURE_MARTS:
        assert online_store.online_entities(settings, mart) == active, mart
    assert online_store.online_entities(settings, names.PUSH_VIEW) == {stayer}
    assert result.business_clock == ts(FEB)
    for user in (stayer, joiner):
        got = online_reads.online_features(settings, user)
        assert {got.as_of[m] for m in FEATURE_MARTS} == {ts(FEB)}
        expected = _mart_row(settings, "usage_agg_30d", user, FEB)
        assert got.values["watch_hours_30d"] == expected["watch_hours_30d"]
        assert got.values["unique_devices_30d"] == expected["unique_devices_30d"]
    assert online_reads.online_features(settings, stayer).values["watch_minutes_today"] == 12.0
    assert not online_reads.online_features(settings, leaver).found

    before = _redis_snapshot(redis_url)
    again = materialize.materialize(settings, FEB)
    assert sorted(again.skipped) == sorted(FEATURE_MARTS) and set(again.removed.values()) == {0}
    assert _redis_snapshot(redis_url) == before


# ---------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------
def test_cli_features_get_prints_values_with_their_as_of(online, people):
    settings, _ = online
    user = people["stayers"][0]
    proc = run_cli(settings, "features", "get", user, "--service", "churn_model_v1")
    assert user in proc.stdout and "2024-02-29" in proc.stdout
    assert _mart_row(settings, "subscriptions_profile", user, FEB)["contract_type"] in proc.stdout
    assert "gender" not in proc.stdout
    gone = run_cli(settings, "features", "get", people["leavers"][0], check=False)
    assert gone.returncode == 1
    assert "no current features online: not an active subscriber at 2024-02-29" in flat(gone.stderr)
    assert "Traceback" not in gone.stderr


def test_cli_features_active_lists_users_the_api_serves(online, people, base_settings):
    settings, _ = online
    proc = run_cli(settings, "features", "active", "--limit", "3")
    listed = proc.stdout.split()
    active = materialize.active_users(settings, FEB)
    assert len(listed) == 3 and listed == active[:3]
    assert f"{len(active)} active subscribers at the business clock 2024-02-29" in flat(proc.stderr)
    assert not set(listed) & set(people["leavers"])
    as_json = json.loads(run_cli(settings, "features", "active", "--limit", "2", "--json").stdout)
    assert as_json["user_ids"] == active[:2] and as_json["active"] == len(active)
    assert run_cli(settings, "features", "get", listed[0]).returncode == 0  # each one is served

    nothing = run_cli(project(base_settings, "features_cli_active_none"), "features", "active", check=False)
    assert nothing.returncode == 1 and "streamflow features materialize" in flat(nothing.stderr)
    assert "Traceback" not in nothing.stderr


def test_cli_materialize_before_apply_fails_without_a_traceback(base_settings):
    settings = project(base_settings, "features_cli_unapplied")
    proc = run_cli(settings, "features", "materialize", "--as-of", "2024-01-31", check=False)
    assert proc.returncode == 1
    assert "run `streamflow features apply` first" in flat(proc.stderr)
    assert "Traceback" not in proc.stderr


def test_cli_dataset_writes_the_training_frame(applied, tmp_path):
    out = tmp_path / "train.parquet"
    proc = run_cli(applied, "dataset", "--periods", "2024-01-31,2024-02-29", "--out", str(out))
    assert "2024-01-31" in proc.stdout and "2024-02-29" in proc.stdout
    written = pd.read_parquet(out)
    assert differences(written, offline.training_frame(applied, [JAN, FEB])) == []
    bad = run_cli(applied, "dataset", "--periods", "2024-03-31", "--out", str(tmp_path / "x.parquet"), check=False)
    assert bad.returncode == 1 and "no labels for period(s) 2024-03-31" in flat(bad.stderr)
