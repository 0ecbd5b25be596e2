"""Online reads of a feature service in one prepared statement, as a Feast online store.

Feast's ``get_online_features`` is general: per request it resolves the service against the registry, builds
entity-key protobufs, reads every view (one ``UNION ALL`` on PostgreSQL), fills a protobuf response and
converts it back to Python values. For the API's one-user reads that general path costs more CPU than the
read itself. :class:`StreamflowColumnarOnlineStore` is Feast's PostgreSQL online store (same tables, same
rows, Feast's own writes and reads for every Feast tool) with one addition, :meth:`read_columns`: the stored
features of a service read with a statement built once per registry snapshot (:class:`ColumnarRead`), the
values decoded with Feast's own conversion, the answer shaped as Feast's
``OnlineResponse.to_dict(include_event_timestamps=True)``.

The reader (:mod:`streamflow.features.online`) uses it only after the columns it returns for a snapshot's
first read equal Feast's own answer for the same users; otherwise it keeps reading through Feast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.postgres_online_store.postgres import (
    PostgreSQLOnlineStore,
    PostgreSQLOnlineStoreConfig,
    _table_id,
)
from feast.infra.utils.postgres.connection_utils import _get_conn, _get_connection_pool
from feast.infra.utils.postgres.postgres_config import ConnectionType
from feast.online_response import TIMESTAMP_POSTFIX
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type
from psycopg import sql

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig
    from psycopg import AsyncConnection, Connection

READ_TYPE = "streamflow.features.columnar_read.StreamflowColumnarOnlineStore"


class ColumnarRead:
    """The stored features ``refs`` ("view:feature") of one service, keyed by ``join_key`` (string ids), as one
    ``UNION ALL`` over the views' online tables: built once from a registry snapshot, then executed as a
    prepared statement per read."""

    def __init__(self, store: FeatureStore, refs: Sequence[str], join_key: str) -> None:
        config = store.config
        versioned = config.registry.enable_online_feature_view_versioning
        by_view: dict[str, list[str]] = {}
        for ref in refs:
            view, feature = ref.split(":", 1)
            by_view.setdefault(view, []).append(feature)
        branches = []
        for view, features in by_view.items():
            table = _table_id(config.project, store.get_feature_view(view), versioned)
            branches.append(
                sql.SQL(
                    "select entity_key, feature_name, value, event_ts from {} "
                    "where entity_key = any(%(keys)s) and feature_name = any({})"
                ).format(sql.Identifier(table), sql.Literal(features))
            )
        self.query = sql.SQL(" union all ").join(branches).as_string(None)
        self.features = [f for features in by_view.values() for f in features]
        self.join_key = join_key
        self.version = config.entity_key_serialization_version

    def key(self, user_id: str) -> bytes:
        """Feast's serialized entity key of one user (the online tables' ``entity_key``)."""
        proto = EntityKeyProto(join_keys=[self.join_key], entity_values=[ValueProto(string_val=user_id)])
        return serialize_entity_key(proto, self.version)

    def read(self, conn: Connection, user_ids: list[str]) -> dict[str, list[Any]]:
        """``user_ids``' values and event times (epoch seconds; absent: None and 0), in order, duplicates
        allowed: the columns of Feast's ``to_dict(include_event_timestamps=True)``."""
        where, out = self._empty(user_ids)
        with conn.cursor(binary=True) as cur:  # bytea and timestamptz as they are stored: nothing to parse
            cur.execute(self.query, {"keys": list(where)}, prepare=True)
            return self._fill(out, where, cur)

    async def read_async(self, conn: AsyncConnection, user_ids: list[str]) -> dict[str, list[Any]]:
        """:meth:`read` over an asynchronous connection: the event loop goes on while the store answers."""
        where, out = self._empty(user_ids)
        async with conn.cursor(binary=True) as cur:
            await cur.execute(self.query, {"keys": list(where)}, prepare=True)
            return self._fill(out, where, await cur.fetchall())

    def _empty(self, user_ids: list[str]) -> tuple[dict[bytes, list[int]], dict[str, list[Any]]]:
        """Each distinct entity key with the positions of its users, and the answer's columns, all absent."""
        where: dict[bytes, list[int]] = {}
        for i, user_id in enumerate(user_ids):
            where.setdefault(self.key(user_id), []).append(i)
        n = len(user_ids)
        out: dict[str, list[Any]] = {self.join_key: list(user_ids), self.join_key + TIMESTAMP_POSTFIX: [0] * n}
        for feature in self.features:
            out[feature] = [None] * n
            out[feature + TIMESTAMP_POSTFIX] = [0] * n
        return where, out

    @staticmethod
    def _fill(out: dict[str, list[Any]], where: dict[bytes, list[int]], rows) -> dict[str, list[Any]]:
        """``out`` with the stored rows (entity key, feature, serialized value, event time) put in place."""
        value = ValueProto()
        for entity_key, feature, raw, event_ts in rows:
            value.ParseFromString(raw)
            python = feast_value_type_to_python_type(value)
            seconds = int(event_ts.timestamp()) if event_ts is not None else 0
            values, stamps = out[feature], out[feature + TIMESTAMP_POSTFIX]
            for i in where[bytes(entity_key)]:
                values[i] = python
                stamps[i] = seconds
        return out


class StreamflowColumnarOnlineStoreConfig(PostgreSQLOnlineStoreConfig):
    """Feast's PostgreSQL online store configuration, under the type name of the columnar reader."""

    type: Literal["streamflow.features.columnar_read.StreamflowColumnarOnlineStore"] = READ_TYPE  # type: ignore[assignment]


class StreamflowColumnarOnlineStore(PostgreSQLOnlineStore):
    """Feast's PostgreSQL online store plus :meth:`read_columns`; everything else is Feast's."""

    @contextlib.contextmanager
    def _get_conn(self, config: RepoConfig, autocommit: bool = False) -> Iterator[Connection]:
        # Feast's own, less its assertion that the type is named "postgres"
        online = config.online_store
        if online.conn_type == ConnectionType.pool:
            if not self._conn_pool:
                self._conn_pool = _get_connection_pool(online)
                self._conn_pool.open()
            connection = self._conn_pool.getconn()
            connection.set_autocommit(autocommit)
            yield connection
            self._conn_pool.putconn(connection)
        else:
            if not self._conn:
                self._conn = _get_conn(online)
            self._conn.set_autocommit(autocommit)
            yield self._conn

    def read_columns(self, config: RepoConfig, plan: ColumnarRead, user_ids: list[str]) -> dict[str, list[Any]]:
        """One read of ``plan`` for ``user_ids`` over the store's connection (see :meth:`ColumnarRead.read`)."""
        with self._get_conn(config, autocommit=True) as conn:
            return plan.read(conn, user_ids)

    async def read_columns_async(
        self, config: RepoConfig, plan: ColumnarRead, user_ids: list[str]
    ) -> dict[str, list[Any]]:
        """:meth:`read_columns` over the store's asynchronous connection (Feast's ``_get_conn_async``)."""
        async with self._get_conn_async(config, autocommit=True) as conn:
            return await plan.read_async(conn, user_ids)
