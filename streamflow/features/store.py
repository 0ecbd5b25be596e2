"""The feature store object built from the platform's settings, its registry reads (services, TTLs,
the business clock) and the errors a user can act on."""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
import redis.exceptions
import sqlalchemy.exc
from feast import FeatureStore
from feast import errors as fe
from feast.repo_config import RepoConfig

from streamflow.core import runlog
from streamflow.core.db import connect, connection_parts, database_url, registry_url
from streamflow.core.errors import StreamflowError
from streamflow.core.names import (
    ALL_SERVICE,
    FEATURE_MARTS,
    MODEL_SERVICE,
    ONLINE_SCHEMA,
    PUSH_VIEW,
)
from streamflow.core.redact import password_of, redacted, scrub
from streamflow.core.settings import Settings
from streamflow.features import contract as fc
from streamflow.features.bulk_store import BULK_TYPE
from streamflow.features.catalog import clock_from, clock_of

if TYPE_CHECKING:
    from feast import FeatureService

ENTITY_TS = "event_timestamp"  # the entity frame's timestamp column, as Feast expects it
KEY_SERIALIZATION = 3
REGISTRY_CACHE_SECONDS = 60


class FeaturesError(StreamflowError):
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
def _postgres_options(settings: Settings) -> dict[str, Any]:

    wh = connection_parts(settings)
    return {
        "host": wh["host"],
        "port": int(wh["port"]),
        "database": wh["dbname"],
        "user": wh["user"],
        "password": wh["password"],
        "sslmode": "prefer",
    }


def batch_engine(settings: Settings) -> str | dict[str, Any]:
    """Feast's ``batch_engine`` of these settings: ``local``, or Feast's Ray compute engine on the cluster at
    ``ray_address``. Without an address Ray starts a local cluster in the materializing process (``address:
    local``: never one another process left running on this machine)."""
    if settings.feast_engine != "ray":
        return "local"
    if settings.ray_address:
        return {"type": "ray.engine", "ray_address": settings.ray_address}
    return {"type": "ray.engine", "ray_address": None, "ray_conf": {"address": "local"}}


def repo_config(settings: Settings, *, materializing: bool = False) -> RepoConfig:
    """Feast's configuration from the settings (what feature_repo/feature_store.yaml says with ${VAR}s,
    plus the online store type of ``settings.online_store``).

    ``materializing``: the configuration materialization runs with: its ``batch_engine`` is the one
    ``settings.feast_engine`` names (:func:`batch_engine`); with Ray on PostgreSQL, the online store class is
    the bulk writer (:class:`~streamflow.features.bulk_store.StreamflowPostgresOnlineStore`: the same tables,
    rows written with COPY). Every other use keeps the local engine: Feast builds the engine whenever it
    updates infrastructure, so `features apply` and the API never connect to a Ray cluster."""

    pg = _postgres_options(settings)
    engine = batch_engine(settings) if materializing else "local"
    if settings.online_store == "redis":
        online: dict[str, Any] = {"type": "redis", "connection_string": settings.redis_url}
    else:
        kind = BULK_TYPE if engine != "local" else "postgres"
        online = {"type": kind, **pg, "db_schema": ONLINE_SCHEMA}
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
        batch_engine=engine,
        materialization=_materialization(settings, engine),
    )


def _materialization(settings: Settings, engine: str | dict[str, Any]) -> dict[str, Any]:
    """Feast's materialization options: Feast's defaults for the local engine; on Ray, one row per user (each
    user's latest in the window, ``pull_latest_from_table_or_query``, the rows the local path writes; not all
    rows, deduplicated per block) written in batches of ``materialize_chunk_rows`` users."""
    if engine == "local":
        return {}
    return {"pull_latest_features": True, "online_write_batch_size": settings.materialize_chunk_rows}


_stores: dict[tuple, FeatureStore] = {}
_stores_lock = threading.Lock()


def _store_key(settings: Settings, materializing: bool) -> tuple:

    redis = settings.redis_url if settings.online_store == "redis" else None
    engine = batch_engine(settings) if materializing else "local"
    return (
        repr(engine),
        settings.feast_project,
        registry_url(settings),
        database_url(settings),
        settings.online_store,
        redis,
        str(settings.feature_repo_dir),
    )


def feature_store(settings: Settings, *, materializing: bool = False) -> FeatureStore:
    """The Feast FeatureStore of these settings, built once per configuration and cached (``materializing``:
    the one materialization writes with, see :func:`repo_config`)."""
    key = _store_key(settings, materializing)
    with _stores_lock:
        store = _stores.get(key)
    if store is not None:
        return store
    _quiet_feast()

    with _errors(settings, "opening the feature store"):
        built = FeatureStore(config=repo_config(settings, materializing=materializing))
    with _stores_lock:
        return _stores.setdefault(key, built)


def _quiet_feast() -> None:
    """Feast logs a warning per contrib store and per retrieval; keep the console for our own output."""

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


def _warehouse_password(settings: Settings) -> str | None:
    try:
        return connection_parts(settings)["password"] or None
    except (OSError, ValueError):  # no password file yet: nothing to hide
        return None


def _hint(settings: Settings, exc: BaseException) -> str | None:
    """What the user can do about a failure of Feast or its stores, or None when it is unknown."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    first = scrub(first, password_of(settings.redis_url), _warehouse_password(settings))  # never a password
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return f"a table is missing ({first}): run `streamflow build`, then `streamflow features apply`"
    if isinstance(exc, psycopg.OperationalError):
        return f"the database is not reachable ({first}); start it with `streamflow stack up`"
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        return f"the Feast registry database is not reachable ({first}); start it with `streamflow stack up`"
    if isinstance(exc, redis.exceptions.ConnectionError):
        return f"Redis at {redacted(settings.redis_url)} is not reachable ({first}); check STREAMFLOW_REDIS_URL"

    if isinstance(exc, fe.FeatureServiceNotFoundException):
        return f"{first}; known services: {MODEL_SERVICE}, {ALL_SERVICE}"
    not_applied = (fe.FeatureViewNotFoundException, fe.ProjectNotFoundException, fe.ProjectObjectNotFoundException)
    if isinstance(exc, not_applied):
        return f"{first}; run `streamflow features apply` first"
    return None


def _registered_views(store: FeatureStore) -> list:

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

    try:
        names = {v.name for v in store.list_feature_views(allow_cache=False)}
    except (fe.ProjectNotFoundException, fe.ProjectObjectNotFoundException):
        names = set()
    missing = [v for v in (*FEATURE_MARTS, PUSH_VIEW) if v not in names]
    if missing:
        raise FeaturesError(
            f"the feature store is not applied (missing views: {', '.join(missing)}): "
            "run `streamflow features apply` first"
        )


def _service(store: FeatureStore, name: str, *, cached: bool = False) -> FeatureService:

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


def feast_clock(settings: Settings, *, refresh: bool = False) -> datetime | None:
    """How far Feast's materialization record says every mart view is materialized (UTC), None before the first
    materialization: what incremental materialization continues from.

    Read from the registry's materialization intervals of the mart views (cached for up to
    REGISTRY_CACHE_SECONDS; ``refresh=True`` reads it afresh).
    """
    store = feature_store(settings)
    not_applied = (fe.FeatureViewNotFoundException, fe.ProjectNotFoundException, fe.ProjectObjectNotFoundException)
    with _errors(settings, "reading the registry"):
        if refresh:
            store.refresh_registry()
        try:
            views = {name: store.get_feature_view(name, allow_registry_cache=True) for name in FEATURE_MARTS}
        except not_applied:
            return None
    return clock_of(views)


def business_clock(settings: Settings, *, refresh: bool = False) -> datetime | None:
    """The business clock: the end of the month the online store serves, as the run log records it once a
    materialization has completed (None before the first). A warehouse materialized before the run log kept
    that record falls back to Feast's record (:func:`feast_clock`)."""
    with _errors(settings, "reading the run log"), connect(settings) as conn:
        served = runlog.served_month(conn, settings.feast_project)
    if served is False:
        return feast_clock(settings, refresh=refresh)
    return clock_from(served, {})
