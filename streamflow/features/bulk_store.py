"""Materialization in bounded memory, written with the online store's bulk path.

Feast's own materialization reads a view's whole window into one Arrow table, converts all of it to
protobufs, then writes it with one INSERT per feature value: memory grows with the month. Here the same rows
(Feast's own offline query: each user's latest row in the window) are read through a server-side cursor
``chunk_rows`` users at a time, converted with Feast's own conversion (the same Arrow types, the same
pandas round trip, ``_convert_arrow_to_proto``, ``serialize_entity_key``) and written:

- PostgreSQL: COPY of the chunk into a temporary staging table, then one
  ``INSERT ... SELECT ... ON CONFLICT (entity_key, feature_name) DO UPDATE`` into Feast's online table; all
  chunks of a view in one transaction, so readers see the previous values or the new ones, never a mix.
  The rows are byte for byte what Feast's PostgreSQL writer stores (same columns, same encodings).
- Any other online store (Redis): the store's own ``online_write_batch`` per chunk (pipelined on Redis).

:class:`StreamflowPostgresOnlineStore` is the same writer as a Feast online store: with
``type: streamflow.features.bulk_store.StreamflowPostgresOnlineStore`` in ``feature_store.yaml``, Feast's
own ``feast materialize`` and pushes write through COPY too; reads are Feast's PostgreSQL reads, unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _to_naive_utc, extract_text_and_num
from feast.infra.online_stores.postgres_online_store.postgres import (
    PostgreSQLOnlineStoreConfig,
    _table_id,
)
from feast.infra.utils.postgres.connection_utils import _get_conn
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.type_map import pg_type_code_to_arrow, python_values_to_proto_values
from feast.utils import _coerce_datetime, _convert_arrow_to_proto
from psycopg import sql

from streamflow.features import in_database
from streamflow.features.columnar_read import READ_TYPE, StreamflowColumnarOnlineStore

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView
    from feast.repo_config import RepoConfig
    from psycopg import Connection

STAGE = "_streamflow_online_stage"
CURSOR = "streamflow_materialize"
BULK_TYPE = "streamflow.features.bulk_store.StreamflowPostgresOnlineStore"
DEADLOCK_ATTEMPTS = 3

log = logging.getLogger("streamflow.features.bulk_store")

Rows = list[tuple[Any, dict[str, Any], datetime, datetime | None]]  # Feast's (entity key, values, ts, created)


# ---------------------------------------------------------------------------------------
# reading: Feast's rows of a view, a chunk at a time
# ---------------------------------------------------------------------------------------
def _join_keys(view: FeatureView) -> dict[str, Any]:
    return {entity.name: entity.dtype.to_value_type() for entity in view.entity_columns}


def _window_query(store: FeatureStore, view: FeatureView, start: datetime, end: datetime) -> str:
    """The SQL Feast's materialization runs for ``view`` over [start, end] (each entity's latest row)."""
    source = view.batch_source
    if source.field_mapping:
        raise ValueError(f"feature view {view.name}: a source with a field mapping is not supported")
    job = store._get_provider().offline_store.pull_latest_from_table_or_query(
        config=store.config,
        data_source=source,
        join_key_columns=list(_join_keys(view)),
        feature_name_columns=[f.name for f in view.features],
        timestamp_field=source.timestamp_field,
        created_timestamp_column=source.created_timestamp_column,
        start_date=start,
        end_date=end,
    )
    return job.to_sql()


def _arrow(description, rows: list[tuple]) -> pa.Table:
    """A chunk as the Arrow table Feast's PostgreSQL retrieval builds, after the pandas round trip of
    Feast's local compute engine (its filter and dedup nodes)."""
    schema = pa.schema([(c.name, pg_type_code_to_arrow(c.type_code)) for c in description])
    columns = [pa.array([row[i] for row in rows]) for i in range(len(schema))]
    table = pa.Table.from_arrays(columns, schema=schema)
    return pa.Table.from_pandas(table.to_pandas())


def read_tables(
    store: FeatureStore, view: FeatureView, start: datetime, end: datetime, chunk_rows: int
) -> Iterator[pa.Table]:
    """Feast's rows of ``view`` in [start, end], ``chunk_rows`` entities at a time, as the Arrow tables
    Feast's materialization converts."""
    query = _window_query(store, view, start, end)
    with _get_conn(store.config.offline_store) as conn, conn.cursor(name=CURSOR) as cur:
        conn.read_only = True
        cur.itersize = chunk_rows
        cur.execute(query)
        while rows := cur.fetchmany(chunk_rows):
            yield _arrow(cur.description, rows)


def as_protos(view: FeatureView, table: pa.Table) -> Rows:
    """A chunk as Feast's rows of protos (what an online store's ``online_write_batch`` takes)."""
    return _convert_arrow_to_proto(table, view, _join_keys(view))


# ---------------------------------------------------------------------------------------
# writing: COPY into staging, one upsert
# ---------------------------------------------------------------------------------------
def _columns(conn: Connection, config: RepoConfig, table: str) -> list[str]:
    """The columns Feast's writer fills, in its order (value_num only where the table has it)."""
    schema = config.online_store.db_schema or config.online_store.user
    has_num = conn.execute(
        "select 1 from information_schema.columns where table_schema = %s and table_name = %s "
        "and column_name = 'value_num'",
        (schema, table),
    ).fetchone()
    num = ["value_num"] if has_num else []
    return ["entity_key", "feature_name", "value", "value_text", *num, "vector_value", "event_ts", "created_ts"]


def _encode(config: RepoConfig, rows: Rows, with_num: bool) -> Iterator[tuple]:
    """Feast's PostgreSQL writer's row per feature value (same serialization, same timestamps)."""
    version = config.entity_key_serialization_version
    vectors = bool(getattr(config.online_store, "vector_enabled", False))
    if vectors:  # only for pgvector tables, which StreamFlow does not use
        from feast.infra.key_encoding_utils import get_list_val_str  # noqa: PLC0415 - rare path, kept lazy
    for entity_key, values, timestamp, created in rows:
        key = serialize_entity_key(entity_key, entity_key_serialization_version=version)
        ts = _to_naive_utc(timestamp)
        created_ts = _to_naive_utc(created) if created is not None else None
        for name, val in values.items():
            text, num = extract_text_and_num(val, with_num)
            vector = get_list_val_str(val) if vectors else None
            head = (key, name, val.SerializeToString(), text)
            yield (*head, num, vector, ts, created_ts) if with_num else (*head, vector, ts, created_ts)


def _copy_text(text: str | None) -> str:
    """A text field of COPY's text format."""
    if text is None:
        return "\\N"
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _bytea(raw: bytes) -> str:
    return "\\\\x" + raw.hex()


def _distinct(column: pa.ChunkedArray) -> tuple[Any, list[int]]:
    """A column's distinct values (as the numpy array Feast converts: nulls included, same dtype) and each
    row's index into them: each distinct value is converted and serialized once."""
    encoded = pc.dictionary_encode(column.combine_chunks(), null_encoding="encode")
    return encoded.dictionary.to_numpy(zero_copy_only=False), encoded.indices.to_pylist()


def _copy_lines(config: RepoConfig, view: FeatureView, table: pa.Table, with_num: bool) -> Iterator[str]:
    """COPY text lines of Feast's PostgreSQL writer's rows for a chunk (one line per entity and feature), built
    column by column with Feast's own conversions: python_values_to_proto_values, serialize_entity_key,
    extract_text_and_num, its timestamp coercions; each distinct value of a column converted once."""
    join_keys = _join_keys(view)
    key_values = {
        k: python_values_to_proto_values(table.column(k).to_numpy(zero_copy_only=False), t)
        for k, t in join_keys.items()
    }
    version = config.entity_key_serialization_version
    keys = [
        _bytea(
            serialize_entity_key(
                EntityKeyProto(join_keys=list(join_keys), entity_values=[key_values[k][i] for k in join_keys]),
                entity_key_serialization_version=version,
            )
        )
        for i in range(table.num_rows)
    ]
    source = view.batch_source

    def stamps(column: str | None) -> list[str]:
        if not column:
            return ["\\N"] * table.num_rows
        distinct, index = _distinct(table.column(column))
        cells = [_copy_text(_to_naive_utc(_coerce_datetime(t)).isoformat(sep=" ")) for t in pd.to_datetime(distinct)]
        return [cells[i] for i in index]

    tail = [
        f"\\N\t{e}\t{c}\n"
        for e, c in zip(stamps(source.timestamp_field), stamps(source.created_timestamp_column), strict=True)
    ]
    for feature in view.features:
        distinct, index = _distinct(table.column(feature.name))
        cells = []
        for val in python_values_to_proto_values(distinct, feature.dtype.to_value_type()):
            text, num = extract_text_and_num(val, with_num)
            cell = f"{_bytea(val.SerializeToString())}\t{_copy_text(text)}"
            cells.append(f"{cell}\t{_copy_text(None if num is None else repr(num))}" if with_num else cell)
        name = _copy_text(feature.name)
        yield "".join(f"{k}\t{name}\t{cells[j]}\t{t}" for k, j, t in zip(keys, index, tail, strict=True))


class _Upserter:
    """Writes chunks of Feast rows into one online table of an open transaction: COPY into a temporary
    staging table, then one INSERT ... ON CONFLICT DO UPDATE (Feast's upsert, set-based)."""

    def __init__(self, conn: Connection, config: RepoConfig, view: FeatureView) -> None:
        self.conn, self.config = conn, config
        name = _table_id(config.project, view, config.registry.enable_online_feature_view_versioning)
        self.columns = _columns(conn, config, name)
        self.with_num = "value_num" in self.columns
        cols = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        updates = sql.SQL(", ").join(
            sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c))
            for c in self.columns
            if c not in ("entity_key", "feature_name")
        )
        stage = sql.Identifier(STAGE)
        conn.execute(
            sql.SQL("create temporary table if not exists {} (like {} including defaults) on commit drop").format(
                stage, sql.Identifier(name)
            )
        )
        self.copy = sql.SQL("copy {} ({}) from stdin").format(stage, cols)
        self.upsert = sql.SQL(
            "insert into {target} ({cols}) select {cols} from {stage} "
            "on conflict (entity_key, feature_name) do update set {updates}"
        ).format(target=sql.Identifier(name), cols=cols, stage=stage, updates=updates)
        self.truncate = sql.SQL("truncate {}").format(stage)

    def write(self, rows: Rows) -> int:
        """Feast's rows of protos (what Feast's writer is handed)."""
        if not rows:
            return 0
        with self.conn.cursor() as cur:
            with cur.copy(self.copy) as copy:
                for row in _encode(self.config, rows, self.with_num):
                    copy.write_row(row)
            self._merge(cur)
        return len(rows)

    def write_table(self, view: FeatureView, table: pa.Table) -> int:
        """A chunk as read (Arrow), encoded column by column."""
        if not table.num_rows:
            return 0
        if getattr(self.config.online_store, "vector_enabled", False):  # pgvector columns: Feast's row encoding
            return self.write(as_protos(view, table))
        with self.conn.cursor() as cur:
            with cur.copy(self.copy) as copy:
                for lines in _copy_lines(self.config, view, table, self.with_num):
                    copy.write(lines)
            self._merge(cur)
        return table.num_rows

    def _merge(self, cur) -> None:
        cur.execute(self.upsert)
        cur.execute(self.truncate)


def _pg_connection(config: RepoConfig) -> Connection:
    """A connection to the online store as Feast's PostgreSQL store opens one (same search path, same
    session time zone for the naive UTC timestamps it writes)."""
    return _get_conn(config.online_store)


def write_tables(
    store: FeatureStore, view: FeatureView, tables: Iterable[pa.Table], on_chunk: Callable[[int], None]
) -> int:
    """Write every chunk of ``view``; returns the entities written. PostgreSQL: one transaction for the view."""
    config = store.config
    written = 0
    if _is_postgres(config):
        with contextlib.closing(_pg_connection(config)) as conn, conn.transaction():
            upserter = _Upserter(conn, config, view)
            for table in tables:
                n = upserter.write_table(view, table)
                written += n
                on_chunk(n)
        return written
    online = store._get_provider().online_store
    for table in tables:
        if table.num_rows:
            online.online_write_batch(config=config, table=view, data=as_protos(view, table), progress=None)
        written += table.num_rows
        on_chunk(table.num_rows)
    return written


def _is_postgres(config: RepoConfig) -> bool:
    return config.online_store.type in ("postgres", BULK_TYPE, READ_TYPE)


def _same_database(config: RepoConfig) -> bool:
    """Whether the offline store's tables are readable by the online store's connection (same server,
    database and role): then the rows can be computed where they are."""
    off, on = config.offline_store, config.online_store
    fields = ("host", "port", "database", "user")
    return getattr(off, "type", "") == "postgres" and all(
        str(getattr(off, f, None)) == str(getattr(on, f, None)) for f in fields
    )


def write_in_database(store: FeatureStore, view: FeatureView, start: datetime, end: datetime) -> int | None:
    """Feast's rows of ``view`` in [start, end] computed by PostgreSQL and swapped in with the table's other rows,
    in one transaction (:mod:`streamflow.features.in_database`); returns the entities written, or None when this
    store or view needs the chunked path (nothing is written then)."""
    config = store.config
    if not _is_postgres(config) or not _same_database(config):
        return None
    query = _window_query(store, view, start, end)
    for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
        try:
            return _write_in_database(config, view, query)
        except psycopg.errors.DeadlockDetected:
            # the swap's DDL (and the grants an event trigger adds to it) can meet autovacuum or a reader
            # in a deadlock; PostgreSQL rolled this attempt back whole, so it is simply run again
            if attempt == DEADLOCK_ATTEMPTS:
                raise
            log.warning(
                "materializing %s met a deadlock; trying again (%d of %d)", view.name, attempt + 1, DEADLOCK_ATTEMPTS
            )
            time.sleep(attempt)
    return None


def _write_in_database(config: RepoConfig, view: FeatureView, query: str) -> int | None:
    name = _table_id(config.project, view, config.registry.enable_online_feature_view_versioning)
    with contextlib.closing(_pg_connection(config)) as conn, conn.transaction():
        columns = _columns(conn, config, name)
        select = in_database.plan(conn, config, view, query, name, columns)
        if select is None:
            return None
        conn.execute(in_database.FUNCTIONS)
        conn.execute("set local extra_float_digits = 1")  # float8 text: shortest round-trip digits
        values = in_database.rebuild(conn, name, columns, select)
    return values // len(view.features)


def materialize_view(
    store: FeatureStore,
    view: FeatureView,
    start: datetime,
    end: datetime,
    chunk_rows: int,
    on_chunk: Callable[[int], None] = lambda _n: None,
    *,
    in_db: bool = True,
) -> int:
    """Materialize ``view`` over [start, end] as Feast would, then record the interval in the registry as Feast
    does; returns the entities written. Inside PostgreSQL when the marts and the online store share a database
    (``in_db``, nothing read into this process); otherwise read, encoded and written in chunks of
    ``chunk_rows`` entities."""
    written = write_in_database(store, view, start, end) if in_db else None
    if written is not None:
        on_chunk(written)
    else:
        written = write_tables(store, view, read_tables(store, view, start, end, chunk_rows), on_chunk)
    store.registry.apply_materialization(view, store.project, start, end)
    return written


# ---------------------------------------------------------------------------------------
# the same writer as a Feast online store
# ---------------------------------------------------------------------------------------
class StreamflowPostgresOnlineStoreConfig(PostgreSQLOnlineStoreConfig):
    """Feast's PostgreSQL online store configuration, under the type name of the bulk writer."""

    type: Literal["streamflow.features.bulk_store.StreamflowPostgresOnlineStore"] = BULK_TYPE  # type: ignore[assignment]


class StreamflowPostgresOnlineStore(StreamflowColumnarOnlineStore):
    """Feast's PostgreSQL online store whose writes go through COPY and one upsert per batch (same tables,
    same rows); reads, table creation and teardown are Feast's (plus the columnar read of its base)."""

    def online_write_batch(self, config: RepoConfig, table: FeatureView, data: Rows, progress) -> None:
        with self._get_conn(config) as conn:
            try:
                _Upserter(conn, config, table).write(data)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        if progress:
            progress(len(data))
