"""The API's online feature client: one Feast online read per request, judged in business time.

Staleness is measured against the business clock (the newest month materialized, read from the Feast
registry), never the wall clock. A view's value is stale when its as_of is more than the view's TTL
before the clock. Month-end views that are stale are refused (409); values pushed in real time
(views fed by a PushSource, TTL one day) follow the same rule, but they are only flagged, because they
are never model inputs: a push newer than the clock is current, one older than the clock minus a day
has been superseded by the monthly data and is marked ``stale`` in ``/features``.

Recovery: Feast's PostgreSQL online store keeps one connection per process and never reconnects, so
this client installs its own (with connect and statement timeouts) and drops it after any store error;
the next read connects again. The registry is cached in memory and re-read by a background thread, so
requests never wait for it and keep working from the last good copy while it is unreachable.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from streamflow.features.store import ALL_SERVICE, ENTITY, MART_VIEWS, MODEL_SERVICE

if TYPE_CHECKING:
    from feast import FeatureStore

    from streamflow.core.settings import Settings

log = logging.getLogger("streamflow.serving.features")

ONLINE = "online"
FEATURE_REGISTRY = "feature_registry"
RETRY_PAUSE_SECONDS = 0.5  # after an online store error, requests answer 503 at once for this long


class StoreUnavailable(RuntimeError):
    """A backing store did not answer (``store``: online or feature_registry). The API answers 503."""

    def __init__(self, store: str, message: str):
        super().__init__(message)
        self.store = store


# ---------------------------------------------------------------------------------------
# business time: the pure rules
# ---------------------------------------------------------------------------------------
def is_stale(as_of: datetime, clock: datetime, ttl: timedelta | None) -> bool:
    """True when a value is older than its view's TTL at the business clock (a TTL of 0 or None never expires).
    A value exactly TTL old is still current; a value newer than the clock is current."""
    if not ttl:
        return False
    return as_of < clock - ttl


def age_seconds(as_of: datetime, clock: datetime) -> float:
    """Business-time age of a value; 0 for a value newer than the clock (a push between monthly runs)."""
    return max((clock - as_of).total_seconds(), 0.0)


@dataclass(frozen=True)
class Verdict:
    """What a user's online values allow: missing features (404), refused stale views (409), flagged views."""

    missing: tuple[str, ...] = ()  # features whose (non-pushed) view has no value for the user
    stale: Mapping[str, datetime] = field(default_factory=dict)  # view -> as_of, refused
    flagged: Mapping[str, datetime] = field(default_factory=dict)  # pushed view -> as_of, served marked stale


def judge(
    as_of: Mapping[str, datetime | None],
    features_of: Mapping[str, Iterable[str]],
    clock: datetime,
    ttls: Mapping[str, timedelta | None],
    pushed: Iterable[str] = (),
) -> Verdict:
    """Decide on one user's values: ``as_of`` per stored view (None: no value), ``features_of`` per view.

    A pushed view with no value is not missing (most users never pushed anything); a month-end view with
    no value makes its features missing. Stale month-end views are refused, stale pushed views flagged.
    """
    pushed = set(pushed)
    missing: list[str] = []
    stale: dict[str, datetime] = {}
    flagged: dict[str, datetime] = {}
    for view, ts in as_of.items():
        if ts is None:
            if view not in pushed:
                missing.extend(features_of.get(view, ()))
            continue
        if is_stale(ts, clock, ttls.get(view)):
            (flagged if view in pushed else stale)[view] = ts
    return Verdict(tuple(dict.fromkeys(missing)), stale, flagged)


# ---------------------------------------------------------------------------------------
# what the registry says: services, TTLs, the clock
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceLayout:
    """A feature service as the API reads it: (view, feature) pairs in order, the stored views (with their own
    event time) and the derived (on-demand) views with the stored views they are computed from."""

    name: str
    service: Any  # feast.FeatureService
    pairs: tuple[tuple[str, str], ...]
    stored: tuple[str, ...]
    derived: Mapping[str, tuple[str, ...]]
    timestamp_key: Mapping[str, str]  # stored view -> the response column holding its event time
    features_of: Mapping[str, tuple[str, ...]]
    stored_refs: tuple[str, ...] = ()  # "view:feature" of the stored features only
    transforms: tuple[tuple[Any, tuple[str, ...]], ...] | None = None  # (on-demand view, its outputs) to apply

    @property
    def features(self) -> list[str]:
        return [f for _v, f in self.pairs]


@dataclass(frozen=True)
class Catalog:
    """One consistent snapshot of the registry, replaced as a whole when it is re-read."""

    services: Mapping[str, ServiceLayout]
    ttls: Mapping[str, timedelta | None]
    pushed: frozenset[str]
    clock: datetime | None
    read_at: float


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def read_catalog(store: FeatureStore, services: Iterable[str]) -> Catalog:
    """The layouts of ``services``, every view's TTL, the pushed views and the business clock, from the
    store's registry cache."""
    from feast.data_source import PushSource
    from feast.online_response import TIMESTAMP_POSTFIX

    views = {v.name: v for v in store.list_feature_views(allow_cache=True)}
    odfvs = {v.name: v for v in store.list_on_demand_feature_views(allow_cache=True)}
    layouts = {}
    for name in services:
        fs = store.get_feature_service(name, allow_cache=True)
        pairs = tuple((p.name_to_use(), f.name) for p in fs.feature_view_projections for f in p.features)
        stored = tuple(dict.fromkeys(v for v, _f in pairs if v not in odfvs))
        derived = {
            v: tuple(s for s in odfvs[v].source_feature_view_projections if s in views)
            for v in dict.fromkeys(v for v, _f in pairs if v in odfvs)
        }
        features_of: dict[str, list[str]] = {}
        for view, feature in pairs:
            features_of.setdefault(view, []).append(feature)
        for view, sources in derived.items():  # a derived feature is missing when a source view is
            for source in sources:
                features_of.setdefault(source, []).extend(features_of[view])
        transforms: list[tuple[Any, tuple[str, ...]]] | None = []
        for view in derived:
            odfv = odfvs[view]
            if (
                odfv.mode != "python"
                or getattr(odfv, "singleton", False)
                or getattr(odfv, "write_to_online_store", False)
            ):
                transforms = None  # only in-request python transformations are applied here
                break
            transforms.append((odfv, tuple(f for v, f in pairs if v == view)))
        layouts[name] = ServiceLayout(
            name=name,
            service=fs,
            pairs=pairs,
            stored=stored,
            derived=derived,
            timestamp_key={v: next(f for w, f in pairs if w == v) + TIMESTAMP_POSTFIX for v in stored},
            features_of={v: tuple(dict.fromkeys(fs_)) for v, fs_ in features_of.items()},
            stored_refs=tuple(f"{v}:{f}" for v, f in pairs if v in stored),
            transforms=tuple(transforms) if transforms is not None else None,
        )
    ends = []
    for name in MART_VIEWS:
        view = views.get(name)
        end = view.most_recent_end_time if view is not None else None
        if end is None:
            ends = []
            break
        ends.append(_utc(end))
    return Catalog(
        services=layouts,
        ttls={n: v.ttl for n, v in views.items()},
        pushed=frozenset(n for n, v in views.items() if isinstance(v.stream_source, PushSource)),
        clock=min(ends) if ends else None,
        read_at=time.monotonic(),
    )


# ---------------------------------------------------------------------------------------
# one user's online values
# ---------------------------------------------------------------------------------------
@dataclass
class UserRow:
    """A user's values of one service, the as_of of each view (a derived view: its oldest source) and the verdict."""

    user_id: str
    values: dict[str, Any]
    view_of: dict[str, str]
    as_of: dict[str, datetime | None]
    verdict: Verdict
    clock: datetime

    @property
    def found(self) -> bool:
        return not self.verdict.missing

    @property
    def oldest(self) -> datetime | None:
        stamps = [ts for ts in self.as_of.values() if ts is not None]
        return min(stamps) if stamps else None


def rows_from_response(
    data: Mapping[str, list], user_ids: list[str], layout: ServiceLayout, catalog: Catalog
) -> list[UserRow]:
    """Feast's response columns (to_dict with event timestamps) as one judged row per user."""
    clock = catalog.clock
    assert clock is not None
    columns = [(feature, view, data[feature]) for view, feature in layout.pairs]
    stamps = [(view, data[key]) for view, key in layout.timestamp_key.items()]
    out = []
    for i, user in enumerate(user_ids):
        as_of: dict[str, datetime | None] = {}
        for view, column in stamps:
            seconds = column[i]
            as_of[view] = datetime.fromtimestamp(seconds, tz=UTC) if seconds else None
        verdict = judge(as_of, layout.features_of, clock, catalog.ttls, catalog.pushed)
        for view, sources in layout.derived.items():
            known = [as_of[s] for s in sources if as_of.get(s) is not None]
            as_of[view] = min(known) if len(known) == len(sources) and known else None
        values = {feature: column[i] for feature, _view, column in columns}
        out.append(UserRow(user, values, {f: v for f, v, _c in columns}, as_of, verdict, clock))
    return out


# ---------------------------------------------------------------------------------------
# the client
# ---------------------------------------------------------------------------------------
def _is_store_error(exc: BaseException) -> bool:
    """Errors that mean "the store did not answer" (503), as opposed to a bug (500)."""
    import psycopg

    kinds: list[type] = [psycopg.Error, ConnectionError, TimeoutError]
    try:
        import redis

        kinds.append(redis.exceptions.RedisError)
    except ImportError:  # pragma: no cover - redis ships with feast[redis]
        pass
    try:
        import sqlalchemy.exc

        kinds.append(sqlalchemy.exc.SQLAlchemyError)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, tuple(kinds)):
        return True
    # Feast refuses to serve a view that is not materialized yet (or is being materialized)
    return isinstance(exc, ValueError) and "cannot serve features" in str(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@dataclass(frozen=True)
class PushOutcome:
    user_id: str
    event_time: datetime
    online: bool  # False: a newer event was already online (the event is still recorded offline)


class FeastOnlineFeatures:
    """Online features through Feast for the API: reads, pushes, the business clock, a health check.

    ``on_error(store)`` is called for every store error (the app counts them); ``refresh_seconds`` is how often
    the background thread re-reads the registry and checks the online store.
    """

    model_service = MODEL_SERVICE
    all_service = ALL_SERVICE

    def __init__(self, settings: Settings, *, on_error: Callable[[str], None] | None = None):
        self.settings = settings
        self.on_error = on_error or (lambda _store: None)
        self.refresh_seconds = settings.feature_refresh_seconds
        self.timeout = settings.online_timeout_seconds
        self.online_ok = False
        self.last_error: str | None = None
        self._store: FeatureStore | None = None
        self._catalog: Catalog | None = None
        self._split_ok: dict[str, bool] = {}  # service -> the split read agreed with Feast's (for _split_for)
        self._split_for: Catalog | None = None
        self._retry_at = 0.0  # until then reads fail fast: at most one reconnection attempt per pause
        self._store_lock = threading.Lock()
        self._push_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the store ------------------------------------------------------------------
    def _config(self):
        """The platform's Feast configuration, tuned for serving: the registry cache never expires by itself
        (the background thread refreshes it), views being materialized keep serving their last values, and the
        online store gets timeouts."""
        from streamflow.features.store import repo_config

        config = repo_config(self.settings)
        registry = dict(config.registry_config)
        registry.update(cache_ttl_seconds=0, cache_mode="sync", serve_features_while_materializing=True)
        engine = dict(registry.get("sqlalchemy_config_kwargs") or {})
        engine["connect_args"] = {**engine.get("connect_args", {}), "connect_timeout": max(1, round(self.timeout))}
        registry["sqlalchemy_config_kwargs"] = engine
        update: dict[str, Any] = {"registry_config": registry}
        if self.settings.online_store == "redis":
            online = dict(config.online_config) if isinstance(config.online_config, dict) else None
            if online is not None and "socket_timeout" not in online.get("connection_string", ""):
                seconds = self.timeout
                online["connection_string"] += f",socket_timeout={seconds},socket_connect_timeout={seconds}"
                update["online_config"] = online
        return config.model_copy(update=update)

    def _feature_store(self) -> FeatureStore:
        store = self._store
        if store is not None:
            return store
        with self._store_lock:
            if self._store is None:
                from feast import FeatureStore

                from streamflow.features.store import _quiet_feast

                _quiet_feast()
                try:
                    self._store = FeatureStore(config=self._config())
                except Exception as exc:
                    if _is_store_error(exc):
                        raise StoreUnavailable(
                            FEATURE_REGISTRY, f"the Feast registry is not reachable ({_first_line(exc)})"
                        ) from None
                    raise
            return self._store

    def _online_store(self):
        return self._feature_store()._get_provider().online_store

    def _connect_postgres(self):
        """A connection for Feast's PostgreSQL online store, as Feast would open it plus timeouts."""
        import psycopg
        from psycopg.conninfo import make_conninfo

        cfg = self._feature_store().config.online_store
        search_path = (cfg.db_schema or cfg.user).strip()
        if search_path != "public":
            search_path += ",public"
        millis = int(self.timeout * 1000)
        conninfo = make_conninfo(
            "",
            user=cfg.user,
            password=cfg.password,
            host=cfg.host,
            port=int(cfg.port),
            dbname=cfg.database,
            sslmode=cfg.sslmode,
            connect_timeout=max(1, round(self.timeout)),
            options=f"-c search_path={search_path} -c statement_timeout={millis}",
        )
        return psycopg.connect(conninfo, autocommit=True)

    def _ensure_connection(self) -> None:
        if self.settings.online_store != "postgres":
            return
        online = self._online_store()
        if getattr(online, "_conn", None) is None:
            online._conn = self._connect_postgres()

    def _reset(self, store: FeatureStore | None = None) -> None:
        """Drop the online store's cached connection (Feast never replaces a broken one)."""
        store = store or self._store
        if store is None:
            return
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

    def _failed(self, store: str, exc: BaseException, doing: str) -> StoreUnavailable:
        self.last_error = f"{doing}: {_first_line(exc)}"
        if store == ONLINE:
            self.online_ok = False
            self._retry_at = time.monotonic() + RETRY_PAUSE_SECONDS
            self._reset()
        self.on_error(store)
        log.warning("%s store error while %s (answering 503): %s", store, doing, _first_line(exc))
        what = "online store" if store == ONLINE else "Feast registry"
        return StoreUnavailable(store, f"the {what} did not answer while {doing}; retry shortly")

    # ---- the registry snapshot --------------------------------------------------------
    def catalog(self) -> Catalog:
        """The registry snapshot requests use. Before the first one is read (the background thread keeps trying),
        requests are answered 503 at once rather than waiting for the registry."""
        catalog = self._catalog
        if catalog is None:
            raise StoreUnavailable(FEATURE_REGISTRY, "the Feast registry has not been read yet; retry shortly")
        return catalog

    def refresh(self) -> Catalog:
        """Re-read the registry (services, TTLs, business clock). Raises StoreUnavailable when it is unreachable
        and no snapshot exists; with one, keeps it."""
        try:
            store = self._feature_store()
            store.get_feature_service(self.model_service, allow_cache=False)  # raises when the registry is away
            store.refresh_registry()
            catalog = read_catalog(store, (self.model_service, self.all_service))
        except StoreUnavailable:
            self.on_error(FEATURE_REGISTRY)
            if self._catalog is None:
                raise
            return self._catalog
        except Exception as exc:
            if _is_not_applied(exc):
                self.last_error = _first_line(exc)
                error = StoreUnavailable(
                    FEATURE_REGISTRY,
                    "the feature store is not applied yet "
                    "(run `streamflow features apply` and `streamflow features materialize`)",
                )
            elif _is_store_error(exc):
                error = self._failed(FEATURE_REGISTRY, exc, "reading the Feast registry")
            else:
                raise
            if self._catalog is None:
                raise error from None
            return self._catalog
        self._catalog = catalog
        return catalog

    def business_clock(self) -> datetime | None:
        return self.catalog().clock

    # ---- reads ----------------------------------------------------------------------
    def read(self, user_ids: list[str], service: str) -> tuple[list[UserRow], Catalog]:
        """One online read for all ``user_ids`` (in order, duplicates allowed), judged against the clock; with the
        registry snapshot the rows were judged with."""
        catalog = self.catalog()
        if catalog.clock is None:
            raise StoreUnavailable(ONLINE, "nothing is materialized online yet (run `streamflow features materialize`)")
        layout = catalog.services[service]
        if time.monotonic() < self._retry_at:  # a read failed just now: answer at once, retry after a pause
            raise StoreUnavailable(ONLINE, f"the online store did not answer ({self.last_error}); retry shortly")
        if self._split_for is not catalog:  # a new registry snapshot is checked again
            self._split_ok, self._split_for = {}, catalog
        key = service
        try:
            self._ensure_connection()
            store = self._feature_store()
            verdict = self._split_ok.get(key)
            if verdict is None:  # first read of this snapshot: compare both ways, keep the split one if equal
                data = self._read_whole(store, layout, user_ids)
                verdict = self._split_ok[key] = self._agrees(store, layout, user_ids, data)
            elif verdict:
                data = self._read_split(store, layout, user_ids)
            else:
                data = self._read_whole(store, layout, user_ids)
        except StoreUnavailable:
            raise
        except Exception as exc:
            if not _is_store_error(exc):
                raise
            raise self._failed(ONLINE, exc, "reading online features") from None
        self.online_ok = True
        self._retry_at = 0.0
        return rows_from_response(data, user_ids, layout, catalog), catalog

    @staticmethod
    def _read_whole(store: FeatureStore, layout: ServiceLayout, user_ids: list[str]) -> dict[str, list]:
        """The feature service as Feast serves it, on-demand features included."""
        response = store.get_online_features(features=layout.service, entity_rows=[{ENTITY: u} for u in user_ids])
        return response.to_dict(include_event_timestamps=True)

    @staticmethod
    def _read_split(store: FeatureStore, layout: ServiceLayout, user_ids: list[str]) -> dict[str, list]:
        """The stored features from Feast, then each on-demand view's own transformation applied to them: the same
        values with less work per request (checked equal to :meth:`_read_whole` for every registry snapshot)."""
        from feast.online_response import TIMESTAMP_POSTFIX

        response = store.get_online_features(
            features=list(layout.stored_refs), entity_rows=[{ENTITY: u} for u in user_ids]
        )
        data = response.to_dict(include_event_timestamps=True)
        inputs = {k: v for k, v in data.items() if not k.endswith(TIMESTAMP_POSTFIX)}
        for odfv, outputs in layout.transforms or ():
            result = odfv.feature_transformation.transform(inputs)  # the view's registered python function
            for name in outputs:
                data[name] = list(result[name])
                data[name + TIMESTAMP_POSTFIX] = [0] * len(user_ids)  # as Feast: derived values have no event time
        return data

    def _agrees(self, store: FeatureStore, layout: ServiceLayout, user_ids: list[str], whole: dict) -> bool:
        if layout.transforms is None:
            return False
        try:
            split = self._read_split(store, layout, user_ids)
        except Exception as exc:
            if _is_store_error(exc):
                raise
            log.warning("the split read of %s failed (%s): reading the whole service", layout.name, exc)
            return False
        same = all(_same(whole.get(k), split.get(k)) for k in whole)
        if not same:
            log.warning("the split read of %s differs from Feast's: reading the whole service", layout.name)
        return same

    def ping(self) -> bool:
        """True when the online store answers now (and something is materialized)."""
        try:
            store = self._feature_store()
            if self.settings.online_store == "postgres":
                self._ensure_connection()
                store._get_provider().online_store._conn.execute("select 1")
            else:  # the same client the reads use
                online = store._get_provider().online_store
                online._get_client(store.config.online_store).ping()
        except StoreUnavailable:
            self.online_ok = False
            return False
        except Exception as exc:
            if not _is_store_error(exc):
                raise
            self._failed(ONLINE, exc, "checking the online store")
            return False
        self.online_ok = True
        self._retry_at = 0.0
        return True

    # ---- pushes ---------------------------------------------------------------------
    def push(
        self, user_id: str, *, watch_minutes_today: float, last_session_at: datetime, event_time: datetime | None
    ) -> PushOutcome:
        """Push one real-time usage event (online at once, and recorded offline) through the PushSource."""
        from streamflow.features.push import push_usage_event
        from streamflow.features.store import FeaturesError, feature_store

        with self._push_lock:  # the push path shares one connection: one push at a time
            try:
                result = push_usage_event(
                    self.settings,
                    user_id,
                    watch_minutes_today=watch_minutes_today,
                    last_session_at=last_session_at,
                    event_time=event_time,
                )
            except Exception as exc:
                if not (isinstance(exc, FeaturesError) or _is_store_error(exc)):
                    raise
                with contextlib.suppress(Exception):  # a store that cannot even be built has nothing to reset
                    self._reset(feature_store(self.settings))
                raise self._failed(ONLINE, exc, "pushing a usage event") from None
        return PushOutcome(result.user_id, result.event_time, result.online)

    # ---- background upkeep ------------------------------------------------------------
    def start(self) -> None:
        """Read the registry now if possible, then refresh it and check the store in a daemon thread."""
        if self._thread is not None:
            return
        try:
            self.refresh()
            self.ping()
        except StoreUnavailable:
            pass
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="feature-registry-refresh", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # without a snapshot (the registry was away at start) retry every few seconds, then at the usual pace
        while not self._stop.wait(self.refresh_seconds if self._catalog is not None else min(self.refresh_seconds, 2)):
            try:
                self.refresh()
                self.ping()
            except StoreUnavailable:
                pass
            except Exception:  # noqa: BLE001 - the thread must survive anything; the next round retries
                log.exception("feature registry refresh failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._reset()


def _same(a: list | None, b: list | None) -> bool:
    """Two response columns hold the same values (NaN equal to NaN)."""
    if a is None or b is None or len(a) != len(b):
        return a is b
    for x, y in zip(a, b, strict=True):
        if x != y and not (isinstance(x, float) and isinstance(y, float) and x != x and y != y):
            return False
    return True


def _is_not_applied(exc: BaseException) -> bool:
    from feast import errors as fe

    return isinstance(
        exc,
        (
            fe.FeatureServiceNotFoundException,
            fe.FeatureViewNotFoundException,
            fe.ProjectNotFoundException,
            fe.ProjectObjectNotFoundException,
        ),
    )
