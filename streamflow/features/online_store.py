"""The online store itself, below Feast's API: its rows, and the connections the reader holds to it.

- Rows: which users hold values of a view (:func:`online_entities`), their keys, the PostgreSQL tables and
  Redis hashes Feast writes (materialization uses these to remove users who left).
- Connections: Feast's configuration tuned for a long-lived reader (:func:`reader_config`), a PostgreSQL
  connection with timeouts (:func:`connect_postgres`), dropping a broken one (:func:`reset_connections`),
  and which errors mean "the store did not answer" (:func:`is_store_error`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis.exceptions
import sqlalchemy.exc
from feast import FeatureStore
from feast import errors as fe
from feast.infra.key_encoding_utils import deserialize_entity_key, serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3, _redis_key_prefix
from feast.infra.online_stores.postgres_online_store.postgres import _table_id
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.repo_config import RepoConfig
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg.conninfo import make_conninfo

from streamflow.core.db import connect
from streamflow.core.names import ENTITY, ONLINE_SCHEMA
from streamflow.core.settings import Settings
from streamflow.features.apply import _missing_relations
from streamflow.features.columnar_read import READ_TYPE
from streamflow.features.store import KEY_SERIALIZATION, FeaturesError, _errors, feature_store, repo_config


# ---------------------------------------------------------------------------------------
# the online store's rows: who is there, and removing who left
# ---------------------------------------------------------------------------------------
def _entity_key(user_id: str):
    return EntityKey(join_keys=[ENTITY], entity_values=[Value(string_val=user_id)])


def entity_key_bytes(user_id: str) -> bytes:
    """A user's key as the online store stores it (Feast's entity key serialization)."""
    return serialize_entity_key(_entity_key(user_id), entity_key_serialization_version=KEY_SERIALIZATION)


def _user_of(serialized: bytes) -> str:
    key = deserialize_entity_key(serialized, entity_key_serialization_version=KEY_SERIALIZATION)
    return key.entity_values[0].string_val


def _pg_table(store: FeatureStore, view) -> str:
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
    return RedisOnlineStore()._get_client(store.config.online_store)


def _redis_fields(view) -> list[bytes]:
    """The hash fields one feature view occupies in a user's Redis hash (Feast's own key scheme)."""
    return [_mmh3(f"{view.name}:{f.name}") for f in view.features] + [f"_ts:{view.name}".encode()]


def _redis_scan(store: FeatureStore, client) -> Iterator[bytes]:
    pattern = _redis_key_prefix([ENTITY]) + b"*" + store.project.encode()
    yield from client.scan_iter(match=pattern, count=1000)


def _redis_rows(store: FeatureStore, client, view) -> list[tuple[bytes, str, datetime]]:
    """(redis key, user_id, event time) of every user holding values of ``view``."""
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


def online_count(settings: Settings, view_name: str) -> int:
    """How many users the online store holds values of ``view_name`` for (counted where the rows are)."""
    if settings.online_store == "redis":
        return len(online_entities(settings, view_name))
    store = feature_store(settings)
    with _errors(settings, "reading the online store"):
        table = _pg_table(store, store.get_feature_view(view_name))
        with connect(settings) as conn:
            if _missing_relations(conn, [table]):
                return 0
            return conn.execute(f"select count(distinct entity_key) from {table}").fetchone()[0]


# ---------------------------------------------------------------------------------------
# connections of a long-lived reader
# ---------------------------------------------------------------------------------------
def reader_config(settings: Settings, timeout: float) -> RepoConfig:
    """The platform's Feast configuration, tuned for a long-lived reader: the registry cache never expires by
    itself (the reader refreshes it), views being materialized keep serving their last values, the online
    store gets ``timeout`` seconds to connect and answer, and on PostgreSQL it is Feast's store plus the
    columnar read (:class:`~streamflow.features.columnar_read.StreamflowColumnarOnlineStore`)."""
    config = repo_config(settings)
    registry = dict(config.registry_config)
    registry.update(cache_ttl_seconds=0, cache_mode="sync", serve_features_while_materializing=True)
    engine = dict(registry.get("sqlalchemy_config_kwargs") or {})
    engine["connect_args"] = {**engine.get("connect_args", {}), "connect_timeout": max(1, round(timeout))}
    registry["sqlalchemy_config_kwargs"] = engine
    update: dict[str, Any] = {"registry_config": registry}
    online = dict(config.online_config) if isinstance(config.online_config, dict) else None
    if settings.online_store == "redis":
        if online is not None and "socket_timeout" not in online.get("connection_string", ""):
            online["connection_string"] += f",socket_timeout={timeout},socket_connect_timeout={timeout}"
            update["online_config"] = online
    elif online is not None and online.get("type") == "postgres":  # Feast's store plus the columnar read
        update["online_config"] = {**online, "type": READ_TYPE}
    return config.model_copy(update=update)


def _postgres_conninfo(store: FeatureStore, timeout: float) -> str:
    cfg = store.config.online_store
    search_path = (cfg.db_schema or cfg.user).strip()
    if search_path != "public":
        search_path += ",public"
    return make_conninfo(
        "",
        user=cfg.user,
        password=cfg.password,
        host=cfg.host,
        port=int(cfg.port),
        dbname=cfg.database,
        sslmode=cfg.sslmode,
        connect_timeout=max(1, round(timeout)),
        options=f"-c search_path={search_path} -c statement_timeout={int(timeout * 1000)}",
    )


def connect_postgres(store: FeatureStore, timeout: float) -> psycopg.Connection:
    """A connection for Feast's PostgreSQL online store, as Feast would open it plus connect and statement
    timeouts."""
    return psycopg.connect(_postgres_conninfo(store, timeout), autocommit=True)


async def connect_postgres_async(store: FeatureStore, timeout: float) -> psycopg.AsyncConnection:
    """:func:`connect_postgres` for the store's asynchronous connection."""
    return await psycopg.AsyncConnection.connect(_postgres_conninfo(store, timeout), autocommit=True)


def reset_connections(store: FeatureStore) -> None:
    """Drop the online store's cached connections (Feast never replaces a broken one); the next use reconnects."""
    online = store._get_provider().online_store
    for attr in ("_conn", "_conn_async"):
        conn = getattr(online, attr, None)
        if conn is not None:
            setattr(online, attr, None)
            try:
                close = conn.close()
                if hasattr(close, "close"):  # an async connection's close() is a coroutine
                    close.close()
            except Exception:  # noqa: BLE001, S110 - the connection is broken already
                pass


def ping(store: FeatureStore) -> None:
    """One round trip to the online store (raises when it does not answer)."""
    online = store._get_provider().online_store
    if store.config.online_store.type != "redis":
        # as Feast's reads do: in autocommit (a push's write may have left the connection out of it)
        with online._get_conn(store.config, autocommit=True) as conn:
            conn.execute("select 1")
    else:  # the same client the reads use
        online._get_client(store.config.online_store).ping()


STORE_ERRORS = (
    psycopg.Error,
    ConnectionError,
    TimeoutError,
    redis.exceptions.RedisError,
    sqlalchemy.exc.SQLAlchemyError,
)


def is_store_error(exc: BaseException) -> bool:
    """Errors that mean "the store did not answer" (the API answers 503), as opposed to a bug (500)."""
    if isinstance(exc, STORE_ERRORS):
        return True
    # Feast refuses to serve a view that is not materialized yet (or is being materialized)
    return isinstance(exc, ValueError) and "cannot serve features" in str(exc)


def is_not_applied(exc: BaseException) -> bool:
    """The registry has no such project, view or service: ``streamflow features apply`` has not run."""
    not_applied = (
        fe.FeatureServiceNotFoundException,
        fe.FeatureViewNotFoundException,
        fe.ProjectNotFoundException,
        fe.ProjectObjectNotFoundException,
    )
    return isinstance(exc, not_applied)


def first_line(exc: BaseException) -> str:
    """An error as one line: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
