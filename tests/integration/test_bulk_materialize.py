"""The chunked bulk writer against Feast's own materialization, on the same built warehouse.

Two Feast projects in one warehouse: one materialized by Feast (`FeatureStore.materialize` and
`materialize_incremental`), one by StreamFlow's writer in small chunks. Their online tables must hold the
same rows byte for byte, and their registries the same materialization intervals.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import psycopg
import pytest
from feast import FeatureStore

from streamflow.core.db import connect
from streamflow.core.names import FEATURE_MARTS
from streamflow.core.stack import EmbeddedPostgres
from streamflow.features import apply, bulk_store, materialize, online_store, store

pytestmark = pytest.mark.integration

JAN, FEB = date(2024, 1, 31), date(2024, 2, 29)
REGISTRY_DB = "bulk_registry"
CHUNK = 97  # several chunks of the 500-user warehouse, the last one partial


def ts(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@pytest.fixture(scope="module")
def base(warehouse_copy):
    settings = warehouse_copy("bulk_wh")
    with psycopg.connect(EmbeddedPostgres(settings).url("postgres"), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{REGISTRY_DB}" with (force)')
        conn.execute(f'create database "{REGISTRY_DB}"')
    return settings.model_copy(update={"feast_registry_db": REGISTRY_DB, "materialize_chunk_rows": CHUNK})


def project(base, name: str):
    settings = base.model_copy(update={"feast_project": name})
    apply.apply(settings)
    return settings


def online_rows(settings) -> dict[str, list[tuple]]:
    out = {}
    with connect(settings) as conn:
        for view in FEATURE_MARTS:
            table = online_store.online_table(settings, view)
            out[view] = conn.execute(
                f"select entity_key, feature_name, value, value_text, vector_value, event_ts, created_ts "
                f"from {table} order by 1, 2"
            ).fetchall()
    return out


def intervals(settings) -> dict[str, list]:
    feast_store = store.feature_store(settings)
    feast_store.refresh_registry()
    return {v: feast_store.get_feature_view(v).materialization_intervals for v in FEATURE_MARTS}


@pytest.mark.parametrize("in_db", [False, True], ids=["python-chunks", "in-database"])
def test_the_bulk_writer_stores_exactly_what_feasts_writer_stores(base, in_db):
    suffix = "db" if in_db else "py"
    by_feast, by_chunks = project(base, f"bulk_feast_{suffix}"), project(base, f"bulk_chunks_{suffix}")
    feast_store, chunk_store = store.feature_store(by_feast), store.feature_store(by_chunks)
    start = ts(JAN) - feast_store.get_feature_view(FEATURE_MARTS[0]).ttl

    # the first month over the TTL window, then the next month incrementally (its window holds two month ends)
    feast_store.materialize(start_date=start, end_date=ts(JAN), feature_views=list(FEATURE_MARTS))
    chunks: list[int] = []
    for name in FEATURE_MARTS:
        view = chunk_store.get_feature_view(name)
        written = bulk_store.materialize_view(chunk_store, view, start, ts(JAN), CHUNK, chunks.append, in_db=in_db)
        assert written == sum(1 for _ in {r[0] for r in online_rows(by_chunks)[name]})
    if in_db:
        assert len(chunks) == len(FEATURE_MARTS), "one statement per view"
    else:
        assert len(chunks) > len(FEATURE_MARTS) and max(chunks) == CHUNK, "several chunks per view"
    first = online_rows(by_feast)
    assert all(first.values())
    assert online_rows(by_chunks) == first
    assert intervals(by_chunks) == intervals(by_feast)

    feast_store.materialize_incremental(end_date=ts(FEB), feature_views=list(FEATURE_MARTS))
    for name in FEATURE_MARTS:
        view = chunk_store.get_feature_view(name)
        bulk_store.materialize_view(chunk_store, view, ts(JAN), ts(FEB), CHUNK, in_db=in_db)
    second = online_rows(by_feast)
    assert second != first
    assert online_rows(by_chunks) == second
    assert intervals(by_chunks) == intervals(by_feast)


def test_the_monthly_step_in_chunks_serves_the_month_and_records_it(base):
    settings = project(base, "bulk_step")
    result = materialize.materialize(settings, JAN)
    active = set(materialize.active_users(settings, JAN))
    assert result.written["subscriptions_profile"] >= len(active)
    for view in FEATURE_MARTS:
        assert online_store.online_entities(settings, view) == active, view
    assert store.feast_clock(settings, refresh=True) == ts(JAN)
    again = materialize.materialize(settings, JAN)
    assert sorted(again.skipped) == sorted(FEATURE_MARTS)


def test_feast_materializes_and_reads_through_the_bulk_online_store_class(base):
    """The writer as a Feast online store (`type: streamflow.features.bulk_store.StreamflowPostgresOnlineStore`):
    Feast's own materialize writes the same rows as with Feast's PostgreSQL store, and Feast reads them back."""
    by_feast, by_class = project(base, "bulk_ref"), project(base, "bulk_class")
    config = store.repo_config(by_class)
    online = {**config.online_config, "type": bulk_store.BULK_TYPE}
    class_store = FeatureStore(config=config.model_copy(update={"online_config": online}))
    assert type(class_store._get_provider().online_store) is bulk_store.StreamflowPostgresOnlineStore
    start = ts(JAN) - class_store.get_feature_view(FEATURE_MARTS[0]).ttl
    for feast_store in (store.feature_store(by_feast), class_store):
        feast_store.materialize(start_date=start, end_date=ts(JAN), feature_views=list(FEATURE_MARTS))
    assert online_rows(by_class) == online_rows(by_feast)

    user = materialize.active_users(by_class, JAN)[0]
    features = [f"usage_agg_30d:{f.name}" for f in class_store.get_feature_view("usage_agg_30d").features]
    got = class_store.get_online_features(features=features, entity_rows=[{"user_id": user}]).to_dict()
    want = store.feature_store(by_feast).get_online_features(features=features, entity_rows=[{"user_id": user}])
    assert got == want.to_dict() and got["watch_hours_30d"][0] is not None
