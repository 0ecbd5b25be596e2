"""Materialization inside PostgreSQL: Feast's rows of a view computed and written by one statement.

When the offline store (the marts) and the PostgreSQL online store are the same database, the rows Feast's
writer would store are produced in SQL from Feast's own window query, with no row leaving the server: one
``INSERT ... SELECT`` per view into a new table built beside the online table, which replaces it in the
caller's transaction (:func:`rebuild`: the result of Feast's upsert, written at the speed of a plain insert).
Each value column holds Feast's protobuf bytes (``feast.types.Value``), built in SQL the way
protobuf serializes a ``oneof`` scalar (tag byte, varint or little-endian fixed width, length-prefixed UTF-8);
the entity key is Feast's serialization (version 3, one string join key); ``value_text`` and ``value_num`` are
what ``extract_text_and_num`` gives (Python's ``str`` of the value); the timestamps are the naive UTC values
Feast's writer sends, read in the session's time zone as its writes are. ``tests/integration/
test_bulk_materialize.py`` checks the rows byte for byte against Feast's own materialization, and
``tests/integration/test_in_database.py`` the encodings value by value against Feast's Python conversion.

Only the types the marts use are encoded here (text, boolean, integer, bigint, double precision, each to its
Feast type); a view with any other column or a different key is written by the chunked Python path of
:mod:`streamflow.features.bulk_store` instead (:func:`plan` returns None).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.value_type import ValueType
from psycopg import sql

if TYPE_CHECKING:
    from feast import FeatureView
    from feast.repo_config import RepoConfig
    from psycopg import Connection

# Feast type of a feature -> (PostgreSQL types of the column it may come from, protobuf tag byte)
_TAGS: dict[ValueType, tuple[frozenset[str], int]] = {
    ValueType.STRING: (frozenset({"text", "character varying"}), 0x12),
    ValueType.INT32: (frozenset({"integer", "smallint"}), 0x18),
    ValueType.INT64: (frozenset({"bigint"}), 0x20),
    ValueType.DOUBLE: (frozenset({"double precision"}), 0x29),
    ValueType.BOOL: (frozenset({"boolean"}), 0x38),
}

# helpers for the rare slow paths; temporary (pg_temp), created in the writer's own session
FUNCTIONS = r"""
create or replace function pg_temp.sf_varint(n bigint) returns bytea language plpgsql immutable strict as $$
declare out bytea := '\x';
begin
  loop  -- protobuf varint of the unsigned 64-bit value of n (negative: ten bytes, as protobuf encodes ints)
    if n >= 0 and n < 128 then return out || set_byte('\x00'::bytea, 0, n::int); end if;
    out := out || set_byte('\x00'::bytea, 0, ((n & 127) | 128)::int);
    n := (n >> 7) & 144115188075855871;
  end loop;
end $$;
create or replace function pg_temp.sf_e15(t text) returns text language plpgsql immutable strict as $$
declare sign text := case when left(t, 1) = '-' then '-' else '' end; digits text;
begin  -- PostgreSQL's '1.2345678901234567e+15' as Python's repr: '1234567890123456.8'
  digits := replace(split_part(ltrim(t, '-'), 'e', 1), '.', '');
  if length(digits) <= 16 then return sign || rpad(digits, 16, '0') || '.0'; end if;
  return sign || left(digits, 16) || '.' || substr(digits, 17);
end $$;
"""


def _varint(expr: str) -> str:
    small = f"set_byte('\\x00'::bytea, 0, ({expr})::int)"  # one byte below 128, the usual case
    return f"(case when ({expr}) between 0 and 127 then {small} else pg_temp.sf_varint(({expr})::bigint) end)"


def _le32(expr: str) -> str:
    return (
        f"set_byte(set_byte(set_byte(set_byte('\\x00000000'::bytea, 0, ({expr}) & 255), 1, (({expr}) >> 8) & 255), "
        f"2, (({expr}) >> 16) & 255), 3, (({expr}) >> 24) & 255)"
    )


def _le8(expr: str, reverse: bool) -> str:
    """A float8's IEEE bytes little-endian (float8send is big-endian)."""
    if reverse:  # PostgreSQL 18 has reverse(bytea)
        return f"reverse(float8send({expr}))"
    return " || ".join(f"substr(float8send({expr}), {i}, 1)" for i in range(8, 0, -1))


def _py_float_text(x: str) -> str:
    """Python's str() of a float8, from PostgreSQL's shortest round-trip text (same digits, other layout)."""
    return (
        f"case when {x} = 'Infinity' then 'inf' when {x} = '-Infinity' then '-inf' "
        f"when {x} = 0 then case when float8send({x}) = '\\x8000000000000000'::bytea then '-0.0' else '0.0' end "
        f"when abs({x}) < 1e16 and {x} = trunc({x}) then trunc({x})::bigint::text || '.0' "
        f"when abs({x}) >= 1e15 and abs({x}) < 1e16 then pg_temp.sf_e15({x}::text) "
        f"else {x}::text end"
    )


def _value(vtype: ValueType, col: str, reverse: bool) -> tuple[str, str, str]:
    """(protobuf bytes, value_text, value_num) expressions of a feature column ``col``. A null (and a double NaN,
    which Feast's pandas round trip turns into a null) is the empty Value: no bytes, no text."""
    tag = f"'\\x{_TAGS[vtype][1]:02x}'::bytea"
    if vtype == ValueType.STRING:
        size = f"octet_length({col})"
        return (
            f"case when {col} is null then '\\x'::bytea else {tag} || {_varint(size)} || convert_to({col}, 'UTF8') end",
            col,
            "null::float8",
        )
    if vtype == ValueType.BOOL:
        value = f"case when {col} then '\\x3801'::bytea when not {col} then '\\x3800'::bytea else '\\x'::bytea end"
        return (
            value,
            f"case when {col} then 'True' when not {col} then 'False' end",
            f"case when {col} then 1.0::float8 when not {col} then 0.0::float8 end",
        )
    if vtype in (ValueType.INT32, ValueType.INT64):
        return (
            f"case when {col} is null then '\\x'::bytea else {tag} || {_varint(col)} end",
            f"{col}::text",
            f"{col}::float8",
        )
    x = f"{col}::float8"
    missing = f"({col} is null or {x} = 'NaN'::float8)"
    return (
        f"case when {missing} then '\\x'::bytea else {tag} || {_le8(x, reverse)} end",
        f"case when {missing} then null else {_py_float_text(x)} end",
        f"case when {missing} then null else {x} end",
    )


def _key_prefix(config: RepoConfig, join_key: str) -> bytes:
    """Feast's serialized entity key of (join_key = '') less its trailing 4-byte value length."""
    key = EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(string_val="")])
    raw = serialize_entity_key(key, entity_key_serialization_version=config.entity_key_serialization_version)
    if config.entity_key_serialization_version < 3 or raw[-4:] != struct.pack("<I", 0):
        raise ValueError("unsupported entity key serialization")
    return raw[:-4]


def plan(
    conn: Connection, config: RepoConfig, view: FeatureView, query: str, target: str, columns: list[str]
) -> str | None:
    """The SELECT of Feast's rows of ``view`` from its window ``query``, as the online table ``target``'s
    ``columns`` (Feast's writer's order); None when the view needs the Python path."""
    keys = [e for e in view.entity_columns]
    if (
        len(keys) != 1
        or keys[0].dtype.to_value_type() != ValueType.STRING
        or config.entity_key_serialization_version < 3
    ):
        return None
    if getattr(config.online_store, "vector_enabled", False):
        return None
    source = view.batch_source
    with conn.cursor() as cur:
        cur.execute(sql.SQL("select * from ({}) q limit 0").format(sql.SQL(query)))  # type: ignore[arg-type]
        pg_types = {
            c.name: conn.execute("select format_type(%s, null)", (c.type_code,)).fetchone()[0] for c in cur.description
        }
    reverse = int(conn.execute("show server_version_num").fetchone()[0]) >= 180000
    rows = []
    for feature in view.features:
        vtype = feature.dtype.to_value_type()
        if vtype not in _TAGS or pg_types.get(feature.name) not in _TAGS[vtype][0]:
            return None
        value, text, num = _value(vtype, f"q.{sql.Identifier(feature.name).as_string(conn)}", reverse)
        rows.append(f"({sql.Literal(feature.name).as_string(conn)}, {value}, {text}, {num})")
    if pg_types.get(keys[0].name) not in _TAGS[ValueType.STRING][0]:
        return None
    key_col = f"q.{sql.Identifier(keys[0].name).as_string(conn)}"
    prefix = "\\x" + _key_prefix(config, keys[0].name).hex()
    key = f"'{prefix}'::bytea || {_le32(f'octet_length({key_col})')} || convert_to({key_col}, 'UTF8')"

    def stamp(column: str | None) -> str:  # the naive UTC time Feast's writer sends, read in the session's zone
        if not column:
            return "null::timestamp"
        return f"(q.{sql.Identifier(column).as_string(conn)} at time zone 'UTC')"

    made = {
        "entity_key": "q._sf_key",
        "feature_name": "f.name",
        "value": "f.value",
        "value_text": "f.text",
        "value_num": "f.num",
        "vector_value": "null",
        "event_ts": "q._sf_ts",
        "created_ts": "q._sf_created",
    }
    if set(columns) - set(made):
        return None
    return (
        f"select {', '.join(made[c] for c in columns)} from "
        f"(select {key} as _sf_key, {stamp(source.timestamp_field)} as _sf_ts, "
        f"{stamp(source.created_timestamp_column)} as _sf_created, q.* from ({query}) q) q "
        f"cross join lateral (values {', '.join(rows)}) as f(name, value, text, num)"
    )


def _ident(conn: Connection, name: str) -> str:
    return sql.Identifier(name).as_string(conn)


def rebuild(conn: Connection, table: str, columns: list[str], select: str) -> int:
    """Write ``select``'s rows over ``table`` (an upsert's result: its rows, plus the old rows of every entity it
    does not hold) by building the new table beside the old one and swapping them, in the caller's transaction:
    the rows go into a table without indexes, the indexes and the primary key are built once at the end (under
    temporary names, then renamed to the old ones), the old table's grants are copied. Readers keep reading the
    old table until the swap, which holds its lock only from the drop to the commit. A role that does not own the
    table upserts into it instead (:func:`upsert`). Returns the rows written."""
    old = _ident(conn, table)
    new_name = f"_sf_new_{table}"[:63]
    new = _ident(conn, new_name)
    cols = ", ".join(_ident(conn, c) for c in columns)
    owner = "select pg_has_role(current_user, relowner, 'USAGE') from pg_class where oid = %s::regclass"
    if not conn.execute(owner, (old,)).fetchone()[0]:  # a role that may write the table but not replace it
        return upsert(conn, table, columns, select)
    conn.execute(f"drop table if exists {new}")
    conn.execute(f"create table {new} (like {old} including defaults)")
    written = conn.execute(f"insert into {new} ({cols}) {select}").rowcount
    conn.execute(f"lock table {old} in share mode")  # no write to it until the swap
    conn.execute(
        f"insert into {new} select * from {old} o where not exists "
        f"(select 1 from (select distinct entity_key from {new}) n where n.entity_key = o.entity_key)"
    )
    renames = _copy_indexes(conn, table, new_name)
    for grantee, privilege in conn.execute(
        "select coalesce(r.rolname, 'public'), a.privilege_type from pg_class c, aclexplode(c.relacl) a "
        "left join pg_roles r on r.oid = a.grantee where c.oid = %s::regclass and a.grantee <> c.relowner",
        (old,),
    ).fetchall():
        grantee_sql = "public" if grantee == "public" else _ident(conn, grantee)
        conn.execute(f"grant {privilege} on {new} to {grantee_sql}")
    conn.execute(f"drop table {old}")
    conn.execute(f"alter table {new} rename to {old}")
    for kind, temporary, final in renames:
        conn.execute(f"alter {kind} {_ident(conn, temporary)} rename to {_ident(conn, final)}")
    return written


def upsert(conn: Connection, table: str, columns: list[str], select: str) -> int:
    """Feast's upsert of ``select``'s rows into ``table``, set-based (for a role that does not own the table)."""
    cols = ", ".join(_ident(conn, c) for c in columns)
    updates = ", ".join(
        f"{_ident(conn, c)} = excluded.{_ident(conn, c)}" for c in columns if c not in ("entity_key", "feature_name")
    )
    return conn.execute(
        f"insert into {_ident(conn, table)} ({cols}) {select} "
        f"on conflict (entity_key, feature_name) do update set {updates}"
    ).rowcount


def _copy_indexes(conn: Connection, table: str, new_name: str) -> list[tuple[str, str, str]]:
    """The old table's indexes (and its primary key) built on the new table under temporary names; returns the
    renames to apply once the old table is gone: ("index", temporary name, old name)."""
    rows = conn.execute(
        "select i.relname, pg_get_indexdef(x.indexrelid), con.conname "
        "from pg_index x join pg_class i on i.oid = x.indexrelid "
        "left join pg_constraint con on con.conindid = x.indexrelid and con.contype = 'p' "
        "where x.indrelid = %s::regclass order by i.relname",
        (_ident(conn, table),),
    ).fetchall()
    renames = []
    for n, (index, definition, constraint) in enumerate(rows):
        temporary = f"_sf_new_{n}_{index}"[:63]
        on = definition.index(" ON ")
        using = definition.index(" USING ", on)
        head = definition[:on].rsplit(" ", 1)[0]  # CREATE [UNIQUE] INDEX
        conn.execute(f"{head} {_ident(conn, temporary)} ON {_ident(conn, new_name)}{definition[using:]}")
        if constraint:
            conn.execute(
                f"alter table {_ident(conn, new_name)} add constraint {_ident(conn, temporary)} "
                f"primary key using index {_ident(conn, temporary)}"
            )
        renames.append(("index", temporary, index))  # a primary key's index and constraint share one name
    return renames
