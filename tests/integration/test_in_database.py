"""The SQL encodings of materialization inside PostgreSQL, value by value against Feast's Python conversion.

Edge values the marts rarely hold (integral and huge doubles, -0.0, infinities, NaN, negative and 64-bit
ints, long and multi-byte strings, nulls): the protobuf bytes, value_text and value_num PostgreSQL computes
must be what Feast's writer stores for the same value.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType

from streamflow.core.db import connect
from streamflow.features import in_database

pytestmark = pytest.mark.integration

DOUBLES = [
    1.5,
    12.0,
    1e-5,
    -3.0,
    1e16,
    1e15,
    123456789012345.6,
    1234567890123456.8,
    -1234567890123456.8,
    1000000000000001.0,
    0.0,
    -0.0,
    0.1,
    1 / 3,
    2.5e-7,
    1e22,
    123.456,
    5e-324,
    1.7976931348623157e308,
    0.0001,
    99999.99,
    -7.25e-5,
    9007199254740993.0,
    math.inf,
    -math.inf,
    math.nan,
    None,
]
INTS = [0, 1, 127, 128, 300, 16384, -1, -2, 2**31 - 1, -(2**31), None]
BIGINTS = [*INTS, 2**53, 2**63 - 1, -(2**63)]
STRINGS = ["", "ab", "é" * 70, "a" * 200, "tab\tnew\nline\\", None]
BOOLS = [True, False, None]
CASES = [
    (ValueType.DOUBLE, "double precision", DOUBLES, np.float64),
    (ValueType.INT32, "integer", INTS, np.int32),
    (ValueType.INT64, "bigint", BIGINTS, np.int64),
    (ValueType.STRING, "text", STRINGS, object),
    (ValueType.BOOL, "boolean", BOOLS, object),
]


def feast_encoding(vtype: ValueType, value, dtype) -> tuple[bytes, str | None, float | None]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return b"", None, None  # Feast's pandas round trip makes NaN a null: the empty Value
    (proto,) = python_values_to_proto_values(np.array([value], dtype=dtype), vtype)
    text, num = extract_text_and_num(proto, True)
    return proto.SerializeToString(), text, num


@pytest.fixture(scope="module")
def conn(pg_settings):
    with connect(pg_settings) as c:
        c.execute(in_database.FUNCTIONS)
        c.execute("set extra_float_digits = 1")
        yield c


@pytest.mark.parametrize("reverse", [False, True], ids=["substr", "reverse"])
@pytest.mark.parametrize(("vtype", "pg_type", "values", "dtype"), CASES, ids=[c[1] for c in CASES])
def test_sql_values_are_feasts_values(conn, vtype, pg_type, values, dtype, reverse):
    if reverse and int(conn.execute("show server_version_num").fetchone()[0]) < 180000:
        reverse = False  # reverse(bytea) is PostgreSQL 18's; the other path is checked anyway
    value, text, num = in_database._value(vtype, "q.c", reverse)
    literal = [
        None
        if v is None
        else ("NaN" if isinstance(v, float) and math.isnan(v) else repr(v) if isinstance(v, float) else v)
        for v in values
    ]
    rows = conn.execute(
        f"select {value}, {text}, {num} from unnest(%s::text[]) with ordinality as t(v, i), "
        f"lateral (select t.v::{pg_type} as c) q order by t.i",
        (["Infinity" if v == "inf" else "-Infinity" if v == "-inf" else v for v in literal],),
    ).fetchall()
    for v, (got_value, got_text, got_num) in zip(values, rows, strict=True):
        want = feast_encoding(vtype, v, dtype)
        assert (bytes(got_value), got_text, got_num) == want, v


def test_sql_entity_key_is_feasts(conn, pg_settings):
    from streamflow.features.store import repo_config  # noqa: PLC0415 - Feast config only for this test

    config = repo_config(pg_settings)
    prefix = "\\x" + in_database._key_prefix(config, "user_id").hex()
    for user in ["7590-VHVEG", "é" * 3, "x" * 300]:
        size = in_database._le32("octet_length(%(u)s::text)")
        got = conn.execute(
            f"select '{prefix}'::bytea || {size} || convert_to(%(u)s, 'UTF8')",
            {"u": user},
        ).fetchone()[0]
        key = EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=user)])
        want = serialize_entity_key(key, entity_key_serialization_version=config.entity_key_serialization_version)
        assert bytes(got) == want
        assert want[-len(user.encode()) - 4 : -len(user.encode())] == struct.pack("<I", len(user.encode()))


def _online_like(conn, name: str) -> None:
    conn.execute(f"drop table if exists {name}")
    conn.execute(
        f"create table {name} (entity_key bytea, feature_name text, value bytea, value_text text, "
        f"event_ts timestamptz, created_ts timestamptz, primary key (entity_key, feature_name))"
    )
    conn.execute(f"create index {name}_ek on {name} (entity_key)")
    conn.execute(
        f"insert into {name} values ('\\x01', 'a', '\\x01', 'old', now(), null), "
        f"('\\x01', 'b', '\\x01', 'old', now(), null), ('\\x02', 'a', '\\x02', 'kept', now(), null)"
    )


def test_the_swap_and_the_upsert_leave_the_same_rows_indexes_and_grants(conn):
    """Build beside and swap (the owner) and Feast's upsert (any writer) give the same table: the new rows, plus
    the old rows of entities the new rows do not hold; the swapped table keeps its indexes' names and grants."""
    columns = ["entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts"]
    select = (
        "select k, f, v, t, '2024-01-31'::timestamp, null::timestamp from (values ('\\x01'::bytea, 'a', "
        "'\\x0a'::bytea, 'new'), ('\\x01', 'b', '\\x0b', 'new'), ('\\x03', 'a', '\\x03', 'new')) as r(k, f, v, t)"
    )
    conn.execute("drop role if exists sf_reader")
    conn.execute("create role sf_reader")
    tables = {}
    for name, write in (("sf_swapped", in_database.rebuild), ("sf_upserted", in_database.upsert)):
        _online_like(conn, name)
        conn.execute(f"grant select on {name} to sf_reader")
        assert write(conn, name, columns, select) == 3
        tables[name] = conn.execute(
            f"select entity_key, feature_name, value, value_text from {name} order by 1, 2"
        ).fetchall()
    assert tables["sf_swapped"] == tables["sf_upserted"]
    assert [(bytes(k), f, t) for k, f, _v, t in tables["sf_swapped"]] == [
        (b"\x01", "a", "new"),
        (b"\x01", "b", "new"),
        (b"\x02", "a", "kept"),
        (b"\x03", "a", "new"),
    ]
    indexes = conn.execute("select indexname from pg_indexes where tablename = 'sf_swapped' order by 1").fetchall()
    assert [i[0] for i in indexes] == ["sf_swapped_ek", "sf_swapped_pkey"]
    assert conn.execute("select has_table_privilege('sf_reader', 'sf_swapped', 'select')").fetchone()[0]
    assert conn.execute("select count(*) from pg_class where relname like '_sf_new_%'").fetchone()[0] == 0
    conn.rollback()
