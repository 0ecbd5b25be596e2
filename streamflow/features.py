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

import contextlib
import io
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from streamflow import feature_contract as fc
from streamflow.config import Settings

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureService, FeatureStore
    from feast.repo_config import RepoConfig
    from feast.repo_contents import RepoContents

MART_VIEWS = fc.MARTS
PUSH_SOURCE = "usage_events"
PUSH_VIEW = "usage_realtime"
MODEL_SERVICE = "churn_model_v1"
ALL_SERVICE = "customer_360"
ONLINE_SCHEMA = "feast_online"  # PostgreSQL online store: tables <project>_<view> in this schema
ENTITY = fc.ENTITY_COLUMN
ENTITY_TS = "event_timestamp"  # the entity frame's timestamp column, as Feast expects it
KEY_SERIALIZATION = 3
REGISTRY_CACHE_SECONDS = 60
REPO_MODULES = ("entities", "data_sources", "feature_views", "on_demand", "feature_services")

Progress = Callable[[str, int, int], None]  # (what, done, total)


class FeaturesError(RuntimeError):
    """A problem the user can act on (not applied yet, month not built, unknown service ...)."""


# ---------------------------------------------------------------------------------------
# business time
# ---------------------------------------------------------------------------------------
def business_timestamp(as_of: date) -> datetime:
    """The timestamp of a month's mart rows: 00:00 UTC of its as_of date."""
    return datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC)


def _sql_ts(ts: datetime) -> str:
    """A timestamptz literal for SQL that Feast embeds as text (built from datetimes only)."""
    return f"'{ts.astimezone(UTC).isoformat()}'::timestamptz"


# ---------------------------------------------------------------------------------------
# configuration and the store
# ---------------------------------------------------------------------------------------
def registry_url(settings: Settings) -> str:
    """SQLAlchemy URL of the SQL registry (psycopg 3 driver)."""
    if settings.feast_registry_url:
        return settings.feast_registry_url
    from streamflow.warehouse import database_url

    return database_url(settings, settings.feast_registry_db, driver="psycopg")


def _postgres_options(settings: Settings) -> dict[str, Any]:
    from streamflow.warehouse import connection_parts

    wh = connection_parts(settings)
    return {
        "host": wh["host"],
        "port": int(wh["port"]),
        "database": wh["dbname"],
        "user": wh["user"],
        "password": wh["password"],
        "sslmode": "prefer",
    }


def repo_config(settings: Settings) -> RepoConfig:
    """Feast's configuration from the settings (what feature_repo/feature_store.yaml says with ${VAR}s,
    plus the online store type of ``settings.online_store``)."""
    from feast.repo_config import RepoConfig

    pg = _postgres_options(settings)
    if settings.online_store == "redis":
        online: dict[str, Any] = {"type": "redis", "connection_string": settings.redis_url}
    else:
        online = {"type": "postgres", **pg, "db_schema": ONLINE_SCHEMA}
    return RepoConfig(
        project=settings.feast_project,
        provider="local",
        registry={
            "registry_type": "sql",
            "path": registry_url(settings),
            "cache_ttl_seconds": REGISTRY_CACHE_SECONDS,
            "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True},
        },
        offline_store={"type": "postgres", **pg, "db_schema": "public", "entity_select_mode": "embed_query"},
        online_store=online,
        entity_key_serialization_version=KEY_SERIALIZATION,
        repo_path=settings.feature_repo_dir,
    )


_stores: dict[tuple, FeatureStore] = {}
_stores_lock = threading.Lock()


def _store_key(settings: Settings) -> tuple:
    from streamflow.warehouse import database_url

    redis = settings.redis_url if settings.online_store == "redis" else None
    return (
        settings.feast_project,
        registry_url(settings),
        database_url(settings),
        settings.online_store,
        redis,
        str(settings.feature_repo_dir),
    )


def feature_store(settings: Settings) -> FeatureStore:
    """The Feast FeatureStore of these settings, built once per configuration and cached."""
    key = _store_key(settings)
    with _stores_lock:
        store = _stores.get(key)
    if store is not None:
        return store
    _quiet_feast()
    from feast import FeatureStore

    with _errors(settings, "opening the feature store"):
        built = FeatureStore(config=repo_config(settings))
    with _stores_lock:
        return _stores.setdefault(key, built)


def _quiet_feast() -> None:
    """Feast logs a warning per contrib store and per retrieval; keep the console for our own output."""
    import logging
    import warnings

    logging.getLogger("feast").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"feast(\..*)?")


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Swallow what Feast prints (materialization banners, tqdm bars) while it works for us."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def _errors(settings: Settings, doing: str) -> Iterator[None]:
    """Turn the failures a user can fix into FeaturesError with a hint; let real bugs through."""
    try:
        yield
    except FeaturesError:
        raise
    except fc.ContractError as exc:
        raise FeaturesError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - classified below, re-raised when unknown
        hint = _hint(settings, exc)
        if hint is None:
            raise
        raise FeaturesError(f"{doing}: {hint}") from None


def _hint(settings: Settings, exc: BaseException) -> str | None:
    import psycopg

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return f"a table is missing ({first}): run `streamflow build`, then `streamflow features apply`"
    if isinstance(exc, psycopg.OperationalError):
        return f"the database is not reachable ({first}); start it with `streamflow stack up`"
    try:
        import sqlalchemy.exc

        if isinstance(exc, sqlalchemy.exc.OperationalError):
            return f"the Feast registry database is not reachable ({first}); start it with `streamflow stack up`"
    except ImportError:  # pragma: no cover - SQLAlchemy ships with the platform
        pass
    try:
        import redis.exceptions

        if isinstance(exc, redis.exceptions.ConnectionError):
            return f"Redis at {settings.redis_url} is not reachable ({first}); check STREAMFLOW_REDIS_URL"
    except ImportError:  # pragma: no cover - redis ships with feast[redis]
        pass
    from feast import errors as fe

    if isinstance(exc, fe.FeatureServiceNotFoundException):
        return f"{first}; known services: {MODEL_SERVICE}, {ALL_SERVICE}"
    not_applied = (fe.FeatureViewNotFoundException, fe.ProjectNotFoundException, fe.ProjectObjectNotFoundException)
    if isinstance(exc, not_applied):
        return f"{first}; run `streamflow features apply` first"
    return None


# ---------------------------------------------------------------------------------------
# the feature repo
# ---------------------------------------------------------------------------------------
_repo_lock = threading.Lock()


def load_repo(settings: Settings) -> RepoContents:
    """The objects feature_repo/ defines, parsed exactly as `feast apply` parses them, with the feature
    schemas read from the dbt manifest of these settings."""
    from feast.repo_operations import parse_repo

    root = settings.feature_repo_dir.resolve()
    if not (root / "feature_store.yaml").exists():
        raise FeaturesError(f"no Feast repo at {root} (feature_store.yaml missing)")
    with _repo_lock, fc.manifest_of(settings):
        for name in REPO_MODULES:  # re-import: another manifest may define other schemas
            module = sys.modules.get(name)
            if module is not None and str(getattr(module, "__file__", "")).startswith(str(root)):
                del sys.modules[name]
        cwd = os.getcwd()
        sys.path.insert(0, str(root))
        os.chdir(root)  # parse_repo names modules relative to the working directory
        try:
            return parse_repo(root)
        finally:
            os.chdir(cwd)
            with contextlib.suppress(ValueError):
                sys.path.remove(str(root))


def _manifest(settings: Settings) -> dict[str, Any]:
    return fc.load_manifest(fc.ensure_manifest(settings))


def _relation(settings: Settings, model: str) -> str:
    return fc.relation(_manifest(settings), model)


def _missing_relations(conn, relations: list[str]) -> list[str]:
    return [r for r in relations if conn.execute("select to_regclass(%s)", (r,)).fetchone()[0] is None]


@dataclass
class ApplyResult:
    project: str
    changes: list[str]  # "create feature view usage_agg_30d", ...; empty when nothing changed
    objects: dict[str, list[str]]  # kind -> names, as registered
    online_store: str
    seconds: float

    @property
    def unchanged(self) -> bool:
        return not self.changes


def apply(settings: Settings, on_step: Callable[[str], None] | None = None) -> ApplyResult:
    """Register feature_repo/ in the SQL registry and create the online tables; idempotent.

    Also creates the push source's offline table. Needs the marts (run `streamflow build` first).
    """
    from streamflow.warehouse import connect

    step = on_step or (lambda _msg: None)
    started = time.perf_counter()
    step("reading the dbt manifest")
    with _errors(settings, "reading the marts"):
        manifest = _manifest(settings)
        relations = [fc.mart_contract(manifest, m).relation for m in MART_VIEWS]
        with connect(settings) as conn:
            missing = _missing_relations(conn, relations)
            if missing:
                raise FeaturesError(
                    f"the marts {', '.join(missing)} do not exist yet: run `streamflow ingest` "
                    "and `streamflow build` first"
                )
            conn.execute(fc.usage_event_ddl())
            conn.commit()
    step("importing Feast")
    store = feature_store(settings)
    step("parsing feature_repo/")
    with _errors(settings, "parsing feature_repo/"):
        repo = load_repo(settings)
    problems = fc.disagreements(repo.feature_views, manifest)
    if problems:
        raise FeaturesError("the feature views disagree with the dbt contracts:\n  " + "\n  ".join(problems))
    step("applying to the registry")
    from feast import Project
    from feast.diff.registry_diff import TransitionType
    from feast.repo_operations import apply_total_with_repo_instance

    if not repo.projects:  # as `feast apply` does: the project named in the configuration
        repo.projects.append(Project(name=store.project))
    # A registered view carries its materialization history; the same definition without it would
    # count as changed and be rewritten. Keep the history, so an unchanged repo is a true no-op.
    with _errors(settings, "reading the registry"):
        registered = {v.name: v for v in _registered_views(store)}
    for view in repo.feature_views:
        if view.name in registered:
            view.materialization_intervals = list(registered[view.name].materialization_intervals)
    with _errors(settings, "applying the feature repo"), _silenced():
        registry_diff, _infra_diff, _infra = store.plan(repo)  # infers like apply, then compares
        changes = [
            f"{d.transition_type.name.lower()} {_kind(d.feast_object_type)} {d.name}"
            for d in registry_diff.feast_object_diffs
            if d.transition_type != TransitionType.UNCHANGED
        ]
        apply_total_with_repo_instance(store, store.project, store.registry, repo, skip_source_validation=False)
        store.refresh_registry()
    objects = {
        "entities": sorted(e.name for e in store.list_entities()),
        "feature views": sorted(v.name for v in store.list_feature_views()),
        "on-demand feature views": sorted(v.name for v in store.list_on_demand_feature_views()),
        "feature services": sorted(s.name for s in store.list_feature_services()),
        "data sources": sorted(s.name for s in store.list_data_sources()),
    }
    return ApplyResult(
        project=store.project,
        changes=sorted(changes),
        objects=objects,
        online_store=settings.online_store,
        seconds=time.perf_counter() - started,
    )


def _registered_views(store: FeatureStore) -> list:
    from feast import errors as fe

    try:
        return store.list_feature_views(allow_cache=False)
    except (fe.ProjectNotFoundException, fe.ProjectObjectNotFoundException):
        return []


def _kind(object_type) -> str:
    return str(getattr(object_type, "value", object_type)).replace("_", " ").lower()


# ---------------------------------------------------------------------------------------
# registry look-ups
# ---------------------------------------------------------------------------------------
def _require_applied(store: FeatureStore) -> None:
    from feast import errors as fe

    try:
        names = {v.name for v in store.list_feature_views(allow_cache=False)}
    except (fe.ProjectNotFoundException, fe.ProjectObjectNotFoundException):
        names = set()
    missing = [v for v in (*MART_VIEWS, PUSH_VIEW) if v not in names]
    if missing:
        raise FeaturesError(
            f"the feature store is not applied (missing views: {', '.join(missing)}): "
            "run `streamflow features apply` first"
        )


def _service(store: FeatureStore, name: str, *, cached: bool = False) -> FeatureService:
    from feast import errors as fe

    try:
        return store.get_feature_service(name, allow_cache=cached)
    except fe.FeatureServiceNotFoundException:
        known = sorted(s.name for s in store.list_feature_services())
        if not known:
            raise FeaturesError("the feature store is not applied: run `streamflow features apply` first") from None
        raise FeaturesError(f"unknown feature service {name!r}; known: {', '.join(known)}") from None


def service_features(settings: Settings, service: str = MODEL_SERVICE) -> list[tuple[str, str]]:
    """(view, feature) of every feature of a service, in the service's order."""
    store = feature_store(settings)
    with _errors(settings, "reading the registry"):
        fs = _service(store, service)
    return [(p.name_to_use(), f.name) for p in fs.feature_view_projections for f in p.features]


def model_features(settings: Settings) -> list[str]:
    """The churn model's inputs: the features of churn_model_v1, in order, without view prefixes."""
    return [name for _view, name in service_features(settings, MODEL_SERVICE)]


def view_ttls(settings: Settings) -> dict[str, timedelta]:
    """TTL of every feature view: how long past its as_of a value may be served as current."""
    store = feature_store(settings)
    with _errors(settings, "reading the registry"):
        return {v.name: v.ttl for v in store.list_feature_views(allow_cache=True)}


def business_clock(settings: Settings, *, refresh: bool = False) -> datetime | None:
    """The newest as_of materialized to the online store (UTC), None before the first materialization.

    Read from the registry's materialization intervals of the mart views (cached for up to
    REGISTRY_CACHE_SECONDS; ``refresh=True`` reads it afresh).
    """
    from feast import errors as fe

    store = feature_store(settings)
    not_applied = (fe.FeatureViewNotFoundException, fe.ProjectNotFoundException, fe.ProjectObjectNotFoundException)
    with _errors(settings, "reading the registry"):
        if refresh:
            store.refresh_registry()
        ends = []
        for name in MART_VIEWS:
            try:
                view = store.get_feature_view(name, allow_registry_cache=True)
            except not_applied:
                return None
            end = view.most_recent_end_time
            if end is None:
                return None
            ends.append(end if end.tzinfo else end.replace(tzinfo=UTC))
    return min(ends).astimezone(UTC)


# ---------------------------------------------------------------------------------------
# materialization
# ---------------------------------------------------------------------------------------
@dataclass
class MaterializeResult:
    as_of: date
    written: dict[str, int]  # view -> users written to the online store (0: already materialized)
    skipped: list[str]  # views already materialized through as_of
    removed: dict[str, int]  # view -> users removed (not active at as_of)
    online_users: dict[str, int]  # view -> users the online store holds afterwards
    seconds: float
    feast_seconds: float
    business_clock: datetime | None = None

    @property
    def rows_per_second(self) -> float:
        rows = sum(self.written.values())
        return rows / self.feast_seconds if self.feast_seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "written": self.written,
            "skipped": self.skipped,
            "removed": self.removed,
            "online_users": self.online_users,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "business_clock": self.business_clock.isoformat() if self.business_clock else None,
        }


def active_users(settings: Settings, as_of: date) -> list[str]:
    """Every user with a mart row at as_of: the subscribers active at that month end."""
    from streamflow.warehouse import connect

    relation = _relation(settings, "subscriptions_profile")
    with _errors(settings, "reading the marts"), connect(settings) as conn:
        rows = conn.execute(
            f"select {ENTITY} from {relation} where {fc.TIMESTAMP_COLUMN} = %s order by 1", (business_timestamp(as_of),)
        ).fetchall()
    return [r[0] for r in rows]


def built_months(settings: Settings) -> list[date]:
    """Months present in the marts, oldest first (none before the first build)."""
    from streamflow.warehouse import connect

    relation = _relation(settings, "subscriptions_profile")
    with _errors(settings, "reading the marts"), connect(settings) as conn:
        if _missing_relations(conn, [relation]):
            return []
        rows = conn.execute(
            f"select distinct ({fc.TIMESTAMP_COLUMN} at time zone 'UTC')::date from {relation} order by 1"
        ).fetchall()
    return [r[0] for r in rows]


def _month_rows(settings: Settings, mart: str, start: datetime, end: datetime) -> int:
    """Users with a row of ``mart`` in [start, end] (Feast's window includes both ends): the users one
    materialization writes."""
    from streamflow.warehouse import connect

    relation = _relation(settings, mart)
    with connect(settings) as conn:
        return conn.execute(
            f"select count(distinct {ENTITY}) from {relation} where {fc.TIMESTAMP_COLUMN} between %s and %s",
            (start, end),
        ).fetchone()[0]


def materialize(
    settings: Settings,
    as_of: date,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> MaterializeResult:
    """Load month ``as_of`` into the online store; afterwards it holds exactly the users active then.

    Incremental: each mart view is materialized from where its last run ended up to as_of 00:00 UTC
    (the mart rows' timestamp; Feast's window includes its end). A view never materialized starts at
    as_of minus its TTL (business time, never the wall clock). A view already materialized through
    as_of is skipped, so a rerun changes nothing; ``force`` rewrites the month (after it was rebuilt).
    Then every user not active at as_of is removed from the online store (Feast has no delete).
    The pushed real-time view is never materialized here: pushes are newer than any month end.
    """
    started = time.perf_counter()
    report = progress or (lambda _what, _done, _total: None)
    store = feature_store(settings)
    with _errors(settings, "materializing"):
        _require_applied(store)
        end = business_timestamp(as_of)
        users = active_users(settings, as_of)
        if not users:
            months = ", ".join(d.isoformat() for d in built_months(settings)) or "none"
            raise FeaturesError(
                f"the marts hold no month {as_of} (built months: {months}): ingest and `streamflow build` it first"
            )
        clock = business_clock(settings, refresh=True)
        if clock is not None and clock > end:
            raise FeaturesError(
                f"the online store already serves {clock.date()}; materializing the older month "
                f"{as_of} would serve stale features as current"
            )
        views = {v.name: v for v in store.list_feature_views(allow_cache=False)}
        total = len(MART_VIEWS) + 1
        written: dict[str, int] = {}
        skipped: list[str] = []
        feast_seconds = 0.0
        for i, name in enumerate(MART_VIEWS):
            report(f"materializing {name}", i, total)
            view = views[name]
            last = view.most_recent_end_time
            if last is not None and last.tzinfo is None:
                last = last.replace(tzinfo=UTC)
            if force:
                _clear_view(settings, store, view)
                last = None
            elif last is not None and last >= end:
                skipped.append(name)
                written[name] = 0
                continue
            start = last if last is not None else end - view.ttl
            written[name] = _month_rows(settings, name, start, end)
            t0 = time.perf_counter()
            with _silenced():
                if last is None:
                    store.materialize(start_date=start, end_date=end, feature_views=[name])
                else:
                    store.materialize_incremental(end_date=end, feature_views=[name])
            feast_seconds += time.perf_counter() - t0
        report("removing users who left", len(MART_VIEWS), total)
        removed = remove_departed(settings, as_of, users)
        report("done", total, total)
        online = {name: len(online_entities(settings, name)) for name in (*MART_VIEWS, PUSH_VIEW)}
        clock = business_clock(settings, refresh=True)
    return MaterializeResult(
        as_of=as_of,
        written=written,
        skipped=skipped,
        removed=removed,
        online_users=online,
        seconds=time.perf_counter() - started,
        feast_seconds=feast_seconds,
        business_clock=clock,
    )


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
    from streamflow.warehouse import connect

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


def remove_departed(settings: Settings, as_of: date, active: list[str] | None = None) -> dict[str, int]:
    """Remove from the online store every user not active at ``as_of``; returns users removed per view.

    Mart views: all their values. The pushed view: values pushed before the end of as_of (a push after
    it is newer than the month's data and stays). Works for the PostgreSQL and the Redis online store.
    """
    store = feature_store(settings)
    keep = set(active if active is not None else active_users(settings, as_of))
    cutoff = business_timestamp(as_of) + timedelta(days=1)
    removed: dict[str, int] = {}
    with _errors(settings, "removing departed users from the online store"):
        for name in (*MART_VIEWS, PUSH_VIEW):
            view = store.get_feature_view(name)
            before = cutoff if name == PUSH_VIEW else None
            removed[name] = _delete_online(settings, store, view, keep, before)
    return removed


def _clear_view(settings: Settings, store: FeatureStore, view) -> int:
    """Remove every value of a view from the online store (before rewriting a month)."""
    return _delete_online(settings, store, view, keep=set(), before=None)


def _delete_online(settings: Settings, store: FeatureStore, view, keep: set[str], before: datetime | None) -> int:
    """Delete the values of ``view`` of every user not in ``keep`` (only those older than ``before``
    when given); returns how many users lost values."""
    if settings.online_store == "redis":
        client = _redis(store)
        doomed = [
            key
            for key, user, ts in _redis_rows(store, client, view)
            if user not in keep and (before is None or ts < before)
        ]
        fields = _redis_fields(view)
        with client.pipeline(transaction=False) as pipe:
            for key in doomed:
                pipe.hdel(key, *fields)  # Redis drops a hash left empty
            pipe.execute()
        return len(doomed)
    from streamflow.warehouse import connect

    table = _pg_table(store, view)
    with connect(settings) as conn:
        if _missing_relations(conn, [table]):
            return 0
        conn.execute("create temporary table _streamflow_keep (entity_key bytea primary key) on commit drop")
        with conn.cursor().copy("copy _streamflow_keep (entity_key) from stdin") as copy:
            for user in keep:
                copy.write_row((entity_key_bytes(user),))
        age = " and o.event_ts < %s" if before is not None else ""
        n = conn.execute(
            f"with gone as (delete from {table} o where not exists (select 1 from _streamflow_keep k "
            f"where k.entity_key = o.entity_key){age} returning o.entity_key) "
            "select count(distinct entity_key) from gone",
            (before,) if before is not None else None,
        ).fetchone()[0]
        conn.commit()
    return n


# ---------------------------------------------------------------------------------------
# offline: point-in-time frames
# ---------------------------------------------------------------------------------------
def historical_features(settings: Settings, entities: str | pd.DataFrame, service: str = MODEL_SERVICE) -> pd.DataFrame:
    """Feast's point-in-time join of a service's features onto entity rows.

    ``entities``: a SQL query or a DataFrame with ``user_id`` and ``event_timestamp`` (extra columns
    are passed through). For each row and feature view, the view's latest value with as_of at or
    before the row's timestamp and not older than the view's TTL; NULL when there is none.
    Feature columns carry plain feature names.
    """
    store = feature_store(settings)
    with _errors(settings, "retrieving historical features"):
        _require_applied(store)
        fs = _service(store, service)
        with _silenced():
            frame = store.get_historical_features(entity_df=entities, features=fs).to_df()
    return frame


def _frame(raw: pd.DataFrame, features: list[str], lead: list[str]) -> pd.DataFrame:
    """Columns in contract order, as_of tz-aware UTC, rows by (as_of, user_id)."""
    import pandas as pd

    out = raw.rename(columns={ENTITY_TS: "as_of"})
    out["as_of"] = pd.to_datetime(out["as_of"], utc=True)
    out = out[lead + features]
    return out.sort_values(["as_of", ENTITY], kind="mergesort").reset_index(drop=True)


def training_frame(settings: Settings, periods: list[date], service: str = MODEL_SERVICE) -> pd.DataFrame:
    """The training set of the label periods: one row per user with a label for period_start P.

    Columns: user_id, as_of (= P, UTC), churn_label (bool), then the service's features as of P,
    joined point-in-time by Feast.
    """
    from streamflow.warehouse import connect

    if not periods:
        raise FeaturesError("no label period given")
    periods = sorted(set(periods))
    labels = _relation(settings, "labels")
    stamps = [business_timestamp(p) for p in periods]
    with _errors(settings, "reading the labels"), connect(settings) as conn:
        have = {
            r[0]
            for r in conn.execute(
                f"select distinct (period_start at time zone 'UTC')::date from {labels} where period_start = any(%s)",
                (stamps,),
            )
        }
        known = [
            r[0]
            for r in conn.execute(f"select distinct (period_start at time zone 'UTC')::date from {labels} order by 1")
        ]
    missing = [p for p in periods if p not in have]
    if missing:
        raise FeaturesError(
            f"no labels for period(s) {', '.join(p.isoformat() for p in missing)}; labelled periods: "
            f"{', '.join(p.isoformat() for p in known) or 'none'} (a period's labels arrive with the "
            "next month's drop)"
        )
    entity_sql = (
        f"select {ENTITY}, period_start as {ENTITY_TS}, churn_label from {labels} "
        f"where period_start in ({', '.join(_sql_ts(s) for s in stamps)})"
    )
    features = [name for _v, name in service_features(settings, service)]
    frame = _frame(historical_features(settings, entity_sql, service), features, [ENTITY, "as_of", "churn_label"])
    frame["churn_label"] = frame["churn_label"].astype(bool)
    return frame


def feature_frame(settings: Settings, as_of: date, service: str = MODEL_SERVICE) -> pd.DataFrame:
    """The service's features of every user active at as_of (user_id, as_of, features): for batch
    scoring and drift."""
    relation = _relation(settings, "subscriptions_profile")
    if not active_users(settings, as_of):
        months = ", ".join(d.isoformat() for d in built_months(settings)) or "none"
        raise FeaturesError(f"the marts hold no month {as_of} (built months: {months})")
    ts = business_timestamp(as_of)
    entity_sql = (
        f"select {ENTITY}, {fc.TIMESTAMP_COLUMN} as {ENTITY_TS} from {relation} "
        f"where {fc.TIMESTAMP_COLUMN} = {_sql_ts(ts)}"
    )
    features = [name for _v, name in service_features(settings, service)]
    return _frame(historical_features(settings, entity_sql, service), features, [ENTITY, "as_of"])


# ---------------------------------------------------------------------------------------
# online: the low-latency read path
# ---------------------------------------------------------------------------------------
@dataclass
class OnlineFeatures:
    """One user's online features: values by feature name, and each view's event time (its as_of)."""

    user_id: str
    values: dict[str, Any]
    view_of: dict[str, str]  # feature -> view
    as_of: dict[str, datetime | None]  # view -> event time of its values (None: no value online)

    @property
    def found(self) -> bool:
        """True when any materialized or pushed view holds values for the user."""
        return any(ts is not None for ts in self.as_of.values())


@dataclass
class _Layout:
    """A service's (view, feature) pairs and which views are on-demand (computed, no own timestamp)."""

    pairs: list[tuple[str, str]]
    on_demand: set[str] = field(default_factory=set)


def _layout(store: FeatureStore, service: FeatureService) -> _Layout:
    pairs = [(p.name_to_use(), f.name) for p in service.feature_view_projections for f in p.features]
    odfvs = {v.name for v in store.list_on_demand_feature_views(allow_cache=True)}
    return _Layout(pairs=pairs, on_demand={v for v, _f in pairs if v in odfvs})


_layouts: dict[tuple[int, str], tuple[float, FeatureService, _Layout]] = {}


def _online_layout(store: FeatureStore, service: str) -> tuple[FeatureService, _Layout]:
    """The service and its layout, kept as long as the registry cache (the hot path reads no registry)."""
    key = (id(store), service)
    hit = _layouts.get(key)
    now = time.monotonic()
    if hit is not None and hit[0] > now:
        return hit[1], hit[2]
    fs = _service(store, service, cached=True)
    layout = _layout(store, fs)
    _layouts[key] = (now + REGISTRY_CACHE_SECONDS, fs, layout)
    return fs, layout


def online_read(settings: Settings, user_ids: list[str], service: str = ALL_SERVICE) -> list[OnlineFeatures]:
    """Values and event times of a service's features for many users in one online read.

    Derived (on-demand) features have no event time of their own: they are as current as their sources.
    Feature names are unique across views, so the response uses plain names (with full names, Feast
    0.67 leaves python-mode on-demand features out of the online response).
    """
    from feast.online_response import TIMESTAMP_POSTFIX

    store = feature_store(settings)
    with _errors(settings, "reading online features"):
        fs, layout = _online_layout(store, service)
        response = store.get_online_features(features=fs, entity_rows=[{ENTITY: u} for u in user_ids])
        data = response.to_dict(include_event_timestamps=True)
    out = []
    for i, user in enumerate(user_ids):
        values: dict[str, Any] = {}
        view_of: dict[str, str] = {}
        as_of: dict[str, datetime | None] = {}
        for view, name in layout.pairs:
            values[name] = data[name][i]
            view_of[name] = view
            if view in layout.on_demand:
                continue
            seconds = data[name + TIMESTAMP_POSTFIX][i]
            if as_of.get(view) is None:
                as_of[view] = datetime.fromtimestamp(seconds, tz=UTC) if seconds else None
        out.append(OnlineFeatures(user_id=user, values=values, view_of=view_of, as_of=as_of))
    return out


def online_features(settings: Settings, user_id: str, service: str = ALL_SERVICE) -> OnlineFeatures:
    """One user's online features (see :func:`online_read`)."""
    return online_read(settings, [user_id], service)[0]


# ---------------------------------------------------------------------------------------
# push: real-time usage
# ---------------------------------------------------------------------------------------
@dataclass
class PushResult:
    user_id: str
    event_time: datetime
    online: bool  # False: a newer event is already online (the offline history still records it)


def _utc(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise FeaturesError(f"{what} must be a datetime, got {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def push_usage_event(
    settings: Settings,
    user_id: str,
    *,
    watch_minutes_today: float,
    last_session_at: datetime,
    event_time: datetime | None = None,
) -> PushResult:
    """Push one user's real-time usage: online at once (usage_realtime), and into its offline table.

    ``event_time`` defaults to ``last_session_at`` (the event's own business time, not the wall clock).
    Pushes are ONLINE_AND_OFFLINE in effect: Feast's PostgreSQL offline store cannot write, so the row
    goes to the push source's table here, in the same transaction as the online write. An event older
    than the one online is recorded offline only.
    """
    import pandas as pd
    from feast.data_source import PushMode

    from streamflow.contract import ID_RE
    from streamflow.warehouse import connect

    if not isinstance(user_id, str) or not ID_RE.match(user_id):
        raise FeaturesError(f"{user_id!r} is not a user id (4 digits, a dash, 5 capitals: 7590-VHVEG)")
    try:
        minutes = float(watch_minutes_today)
    except (TypeError, ValueError):
        raise FeaturesError(f"watch_minutes_today must be a number, got {watch_minutes_today!r}") from None
    if not math.isfinite(minutes) or not 0 <= minutes <= 24 * 60:
        raise FeaturesError(f"watch_minutes_today must be between 0 and 1440, got {watch_minutes_today!r}")
    session = _utc(last_session_at, "last_session_at")
    when = _utc(event_time, "event_time") if event_time is not None else session
    row = {ENTITY: user_id, fc.USAGE_EVENT_TIMESTAMP: when, "watch_minutes_today": minutes, "last_session_at": session}
    store = feature_store(settings)
    table = f"{fc.USAGE_EVENT_SCHEMA}.{fc.USAGE_EVENT_TABLE}"
    columns = [c for c, _t in fc.USAGE_EVENT_COLUMNS]
    with _errors(settings, "pushing a usage event"), connect(settings) as conn:
        conn.execute(
            f"insert into {table} ({', '.join(columns)}) values ({', '.join(['%s'] * len(columns))})",
            [row[c] for c in columns],
        )
        current = _online_event_time(store, user_id)
        online = current is None or when >= current
        if online:
            frame = pd.DataFrame([row])
            for col in (fc.USAGE_EVENT_TIMESTAMP, "last_session_at"):
                frame[col] = pd.to_datetime(frame[col], utc=True)
            store.push(PUSH_SOURCE, frame, to=PushMode.ONLINE)
        conn.commit()
    return PushResult(user_id=user_id, event_time=when, online=online)


def _online_event_time(store: FeatureStore, user_id: str) -> datetime | None:
    """Event time of the user's pushed usage online, None when there is none."""
    from feast.online_response import TIMESTAMP_POSTFIX

    view = store.get_feature_view(PUSH_VIEW)
    ref = f"{PUSH_VIEW}:{view.features[0].name}"
    data = store.get_online_features(features=[ref], entity_rows=[{ENTITY: user_id}]).to_dict(
        include_event_timestamps=True
    )
    seconds = data[view.features[0].name + TIMESTAMP_POSTFIX][0]
    return datetime.fromtimestamp(seconds, tz=UTC) if seconds else None
