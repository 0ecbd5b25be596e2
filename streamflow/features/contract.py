"""Feature schemas declared once: the dbt contracts of the marts, read from the dbt manifest.

The feature views in ``feature_repo/`` take their feature names and types from here, so a column
is declared in exactly one place (the mart's ``.yml``). :func:`disagreements` compares Feast
schemas with the contracts and names every difference; a test fails on any.

The real-time usage table behind the push source is not a dbt model: its columns are declared
here once (:data:`USAGE_EVENT_COLUMNS`) and both the Feast schema and the table DDL derive from it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import feast.types as ft
from feast import Field

from streamflow.core.errors import StreamflowError
from streamflow.core.names import ENTITY, FEATURE_MARTS
from streamflow.core.settings import get_settings
from streamflow.warehouse import runner

if TYPE_CHECKING:
    from streamflow.core.settings import Settings

TIMESTAMP_COLUMN = "as_of"
DBT_PACKAGE = "streamflow"

# the push source's offline table: (schema, table) and its columns as (name, PostgreSQL type)
USAGE_EVENT_SCHEMA = "feast_push"
USAGE_EVENT_TABLE = "usage_events"
USAGE_EVENT_TIMESTAMP = "event_timestamp"
USAGE_EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    (ENTITY, "text"),
    (USAGE_EVENT_TIMESTAMP, "timestamptz"),
    ("watch_minutes_today", "double precision"),
    ("last_session_at", "timestamptz"),
)

# dbt contract data_type (PostgreSQL spelling, lower case) -> Feast type name (feast.types)
_FEAST_TYPES = {
    "text": "String",
    "varchar": "String",
    "character varying": "String",
    "boolean": "Bool",
    "bool": "Bool",
    "smallint": "Int32",
    "integer": "Int32",
    "int": "Int32",
    "int4": "Int32",
    "bigint": "Int64",
    "int8": "Int64",
    "real": "Float32",
    "float4": "Float32",
    "double precision": "Float64",
    "float8": "Float64",
    "numeric": "Float64",
    "timestamptz": "UnixTimestamp",
    "timestamp with time zone": "UnixTimestamp",
}


class ContractError(StreamflowError):
    """The dbt manifest is missing or a mart's contract cannot back a feature view."""


@dataclass(frozen=True)
class MartContract:
    """A mart as its enforced dbt contract declares it."""

    name: str
    schema: str
    table: str
    columns: tuple[tuple[str, str], ...]  # (name, data_type) in declaration order

    @property
    def relation(self) -> str:
        """schema.table, as the offline store queries it."""
        return f"{self.schema}.{self.table}"

    @property
    def features(self) -> tuple[tuple[str, str], ...]:
        """The columns that are features: all but the entity key and the timestamp."""
        return tuple(c for c in self.columns if c[0] not in (ENTITY, TIMESTAMP_COLUMN))


def relation(manifest: dict[str, Any], model: str) -> str:
    """schema.table a dbt model builds (any model, e.g. the labels)."""
    node = manifest.get("nodes", {}).get(f"model.{DBT_PACKAGE}.{model}")
    if node is None:
        raise ContractError(f"the dbt manifest has no model {model!r}")
    return f"{node['schema']}.{node.get('alias') or node['name']}"


def feast_type_name(data_type: str) -> str:
    """The Feast type (name in feast.types) of a contract data_type; ContractError if there is none."""
    key = " ".join(data_type.lower().split())
    key = key.split("(")[0].strip()  # varchar(20), numeric(10,2)
    try:
        return _FEAST_TYPES[key]
    except KeyError:
        known = ", ".join(sorted(_FEAST_TYPES))
        raise ContractError(f"data_type {data_type!r} has no Feast type; known: {known}") from None


def mart_contract(manifest: dict[str, Any], mart: str) -> MartContract:
    """The enforced contract of ``mart`` from a parsed manifest.json."""
    node = manifest.get("nodes", {}).get(f"model.{DBT_PACKAGE}.{mart}")
    if node is None:
        raise ContractError(f"the dbt manifest has no model {mart!r}")
    contract = (node.get("config") or {}).get("contract") or node.get("contract") or {}
    if not contract.get("enforced"):
        raise ContractError(f"the dbt model {mart!r} has no enforced contract: Feast reads only contracted marts")
    columns = tuple((name, (col.get("data_type") or "").strip()) for name, col in node.get("columns", {}).items())
    untyped = [name for name, data_type in columns if not data_type]
    if untyped:
        raise ContractError(f"the contract of {mart!r} gives no data_type for {', '.join(untyped)}")
    names = [c[0] for c in columns]
    for required in (ENTITY, TIMESTAMP_COLUMN):
        if required not in names:
            raise ContractError(f"the contract of {mart!r} lacks the column {required!r} that Feast joins on")
    schema, table = relation(manifest, mart).split(".", 1)
    return MartContract(name=mart, schema=schema, table=table, columns=columns)


def to_fields(columns) -> list[Field]:
    """Feast Fields for (name, data_type) pairs."""

    return [Field(name=name, dtype=getattr(ft, feast_type_name(data_type))) for name, data_type in columns]


# ---------------------------------------------------------------------------------------
# the manifest the feature repo reads
# ---------------------------------------------------------------------------------------
_manifest_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("streamflow_manifest", default=None)
_cache: dict[Path, tuple[float, dict[str, Any]]] = {}
_cache_lock = threading.Lock()


def manifest_path(settings: Settings) -> Path:
    return settings.dbt_target_dir / "manifest.json"


def ensure_manifest(settings: Settings) -> Path:
    """target/manifest.json, produced with `dbt parse` (no database needed) when it is missing."""
    path = manifest_path(settings)
    if not path.exists():
        try:
            runner.parse(settings)
        except runner.DbtError as exc:
            raise ContractError(f"no dbt manifest at {path} and `dbt parse` failed: {exc}") from None
        if not path.exists():
            raise ContractError(f"`dbt parse` wrote no manifest at {path}")
    return path


def load_manifest(path: Path) -> dict[str, Any]:
    """A parsed manifest.json, cached until the file changes."""
    mtime = path.stat().st_mtime
    with _cache_lock:
        hit = _cache.get(path)
        if hit and hit[0] == mtime:
            return hit[1]
    data = json.loads(path.read_text())
    with _cache_lock:
        _cache[path] = (mtime, data)
    return data


@contextlib.contextmanager
def manifest_of(settings: Settings) -> Iterator[Path]:
    """Within this block the feature repo's definitions read the manifest of ``settings``."""
    token = _manifest_path.set(ensure_manifest(settings))
    try:
        yield _manifest_path.get()
    finally:
        _manifest_path.reset(token)


def _active_manifest() -> dict[str, Any]:
    path = _manifest_path.get()
    if path is None:  # imported by the `feast` CLI: the settings of the environment
        path = ensure_manifest(get_settings())
    return load_manifest(path)


def mart_table(mart: str) -> str:
    """schema.table of a mart, from the manifest (for the feature repo's data sources)."""
    return mart_contract(_active_manifest(), mart).relation


def mart_fields(mart: str) -> list[Field]:
    """The entity column and every feature of a mart, typed from its contract (for the feature views)."""
    contract = mart_contract(_active_manifest(), mart)
    key = [c for c in contract.columns if c[0] == ENTITY]
    return to_fields(key + list(contract.features))


def usage_event_fields() -> list[Field]:
    """The entity column and the pushed features of the real-time usage view."""
    return to_fields([c for c in USAGE_EVENT_COLUMNS if c[0] != USAGE_EVENT_TIMESTAMP])


def usage_event_ddl() -> str:
    """CREATE statements of the push source's offline table (idempotent)."""
    cols = ",\n    ".join(
        f"{name} {data_type} not null" if name in (ENTITY, USAGE_EVENT_TIMESTAMP) else f"{name} {data_type}"
        for name, data_type in USAGE_EVENT_COLUMNS
    )
    table = f"{USAGE_EVENT_SCHEMA}.{USAGE_EVENT_TABLE}"
    return (
        f"create schema if not exists {USAGE_EVENT_SCHEMA};\n"
        f"create table if not exists {table} (\n    {cols}\n);\n"
        f"create index if not exists {USAGE_EVENT_TABLE}_user_ts\n"
        f"    on {table} ({ENTITY}, {USAGE_EVENT_TIMESTAMP});\n"
        f"comment on table {table} is 'Real-time usage events pushed to the Feast push source usage_events "
        "(written by streamflow.features.push); the offline history of the usage_realtime view.';"
    )


# ---------------------------------------------------------------------------------------
# agreement between Feast and dbt
# ---------------------------------------------------------------------------------------
def disagreements(feature_views, manifest: dict[str, Any]) -> list[str]:
    """Every difference between the feature views of the marts and the marts' contracts.

    A view must have exactly the contract's feature columns (same names, same types) and read the
    mart's relation with the contract's timestamp column. Empty list: they agree.
    """
    problems: list[str] = []
    by_name = {fv.name: fv for fv in feature_views}
    for mart in FEATURE_MARTS:
        fv = by_name.get(mart)
        if fv is None:
            problems.append(f"{mart}: no feature view for the mart")
            continue
        try:
            contract = mart_contract(manifest, mart)
        except ContractError as exc:
            problems.append(f"{mart}: {exc}")
            continue
        expected = {name: feast_type_name(data_type) for name, data_type in contract.features}
        actual = {f.name: type_name(f.dtype) for f in fv.features}
        for name in expected.keys() - actual.keys():
            problems.append(f"{mart}.{name}: in the dbt contract, not in the feature view")
        for name in actual.keys() - expected.keys():
            problems.append(f"{mart}.{name}: in the feature view, not in the dbt contract")
        for name in expected.keys() & actual.keys():
            if expected[name] != actual[name]:
                problems.append(
                    f"{mart}.{name}: Feast type {actual[name]}, dbt contract {expected[name]} "
                    f"({dict(contract.features)[name]})"
                )
        source = fv.batch_source
        table = getattr(source, "table", None) or getattr(getattr(source, "_postgres_options", None), "_table", None)
        if table != contract.relation:
            problems.append(f"{mart}: the feature view reads {table!r}, the mart is {contract.relation!r}")
        if source.timestamp_field != TIMESTAMP_COLUMN:
            problems.append(f"{mart}: timestamp_field {source.timestamp_field!r}, the mart's is {TIMESTAMP_COLUMN!r}")
    return problems


def type_name(dtype) -> str:
    """'Int64', 'String', ... for a Feast type object."""

    for name in set(_FEAST_TYPES.values()):
        if dtype == getattr(ft, name):
            return name
    return str(dtype)
