"""The feature store: Feast on the dbt marts, in business time.

- :func:`feature_store` builds Feast's configuration from the platform's settings: SQL registry in
  PostgreSQL, PostgreSQL offline store (the marts), PostgreSQL online store by default or Redis.
- :func:`apply` registers ``feature_repo/`` (the same definitions the ``feast`` CLI reads).
- :func:`materialize` loads one month into the online store, incrementally, and then removes the
  users who are no longer active, so the online store holds exactly the users active at that month.
- :func:`training_frame` and :func:`feature_frame` join features point-in-time with Feast.
- :func:`online_read` is the low-latency read path (values and the as_of of every view).
- :func:`push_usage_event` updates real-time usage online at once and records it offline.

All time is business time: a mart row carries ``as_of`` = 00:00 UTC of its month-end date, and the
newest month materialized is the :func:`business_clock` staleness is measured against.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from streamflow.core.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore
from streamflow.features.apply import _missing_relations
from streamflow.features.store import ENTITY, KEY_SERIALIZATION, ONLINE_SCHEMA, FeaturesError, _errors, feature_store


# ---------------------------------------------------------------------------------------
# the online store's rows: who is there, and removing who left
# ---------------------------------------------------------------------------------------
def _entity_key(user_id: str):
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return EntityKey(join_keys=[ENTITY], entity_values=[Value(string_val=user_id)])


def entity_key_bytes(user_id: str) -> bytes:
    """A user's key as the online store stores it (Feast's entity key serialization)."""
    from feast.infra.key_encoding_utils import serialize_entity_key

    return serialize_entity_key(_entity_key(user_id), entity_key_serialization_version=KEY_SERIALIZATION)


def _user_of(serialized: bytes) -> str:
    from feast.infra.key_encoding_utils import deserialize_entity_key

    key = deserialize_entity_key(serialized, entity_key_serialization_version=KEY_SERIALIZATION)
    return key.entity_values[0].string_val


def _pg_table(store: FeatureStore, view) -> str:
    from feast.infra.online_stores.postgres_online_store.postgres import _table_id

    name = _table_id(store.project, view, store.config.registry.enable_online_feature_view_versioning)
    return f'{ONLINE_SCHEMA}."{name}"'


def online_table(settings: Settings, view_name: str) -> str:
    """schema."table" of a feature view in the PostgreSQL online store (one row per user and feature)."""
    if settings.online_store != "postgres":
        raise FeaturesError(f"the online store is {settings.online_store}, not PostgreSQL: it has no tables")
    store = feature_store(settings)
    with _errors(settings, "reading the registry"):
        return _pg_table(store, store.get_feature_view(view_name))


def _redis(store: FeatureStore):
    from feast.infra.online_stores.redis import RedisOnlineStore

    return RedisOnlineStore()._get_client(store.config.online_store)


def _redis_fields(view) -> list[bytes]:
    """The hash fields one feature view occupies in a user's Redis hash (Feast's own key scheme)."""
    from feast.infra.online_stores.helpers import _mmh3

    return [_mmh3(f"{view.name}:{f.name}") for f in view.features] + [f"_ts:{view.name}".encode()]


def _redis_scan(store: FeatureStore, client) -> Iterator[bytes]:
    from feast.infra.online_stores.helpers import _redis_key_prefix

    pattern = _redis_key_prefix([ENTITY]) + b"*" + store.project.encode()
    yield from client.scan_iter(match=pattern, count=1000)


def _redis_rows(store: FeatureStore, client, view) -> list[tuple[bytes, str, datetime]]:
    """(redis key, user_id, event time) of every user holding values of ``view``."""
    from google.protobuf.timestamp_pb2 import Timestamp

    keys = list(_redis_scan(store, client))
    out = []
    suffix = len(store.project.encode())
    ts_field = f"_ts:{view.name}"
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        with client.pipeline(transaction=False) as pipe:
            for key in chunk:
                pipe.hget(key, ts_field)
            stamps = pipe.execute()
        for key, raw in zip(chunk, stamps, strict=True):
            if raw is None:
                continue
            ts = Timestamp()
            ts.ParseFromString(raw)
            out.append((key, _user_of(key[:-suffix]), ts.ToDatetime(tzinfo=UTC)))
    return out


def online_entities(settings: Settings, view_name: str) -> set[str]:
    """The users the online store holds values of ``view_name`` for."""
    from streamflow.core.db import connect

    store = feature_store(settings)
    with _errors(settings, "reading the online store"):
        view = store.get_feature_view(view_name)
        if settings.online_store == "redis":
            return {user for _key, user, _ts in _redis_rows(store, _redis(store), view)}
        with connect(settings) as conn:
            if _missing_relations(conn, [_pg_table(store, view)]):
                return set()
            rows = conn.execute(f"select distinct entity_key from {_pg_table(store, view)}").fetchall()
    return {_user_of(bytes(r[0])) for r in rows}
