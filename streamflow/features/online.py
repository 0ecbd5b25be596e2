"""The one online read path: a user's current features through Feast, judged in business time.

:class:`OnlineReader` is the reader every caller uses: the API holds one per process (reads, pushes, the
business clock, a health check, a background thread keeping the registry snapshot fresh); the CLI and
the tests call :func:`online_read` / :func:`online_features`, which read through the reader of their
settings with a fresh registry snapshot. Every row is judged by the one staleness rule of
:mod:`streamflow.features.freshness`; pushes go through the same Feast store object the reads use.

Recovery: Feast's PostgreSQL online store keeps one connection per process and never reconnects, so the
reader installs its own (with connect and statement timeouts) and drops it after any store error; the
next read connects again. The registry is cached in memory and re-read by a background thread, so
requests never wait for it and keep working from the last good copy while it is unreachable. Every wait is
bounded by ``online_timeout_seconds``: connecting, each statement, and waiting for the store's connection
while another call uses it. Pushes record their offline row over one kept connection (with the same
timeouts), dropped after an error like the online one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime

import psycopg
from feast import FeatureStore

from streamflow.core import runlog
from streamflow.core.db import connect
from streamflow.core.errors import StreamflowError
from streamflow.core.names import ALL_SERVICE, MODEL_SERVICE
from streamflow.core.settings import Settings
from streamflow.features import online_store as ostore
from streamflow.features.catalog import Catalog, ServiceLayout, UserRow, read_catalog, rows_from_response
from streamflow.features.columnar_read import ColumnarRead
from streamflow.features.push import PushResult, push_usage_event
from streamflow.features.read_paths import agrees, columnar_plan, derive, read_split, read_whole
from streamflow.features.store import FeaturesError, _quiet_feast, _service, _store_key

log = logging.getLogger("streamflow.features.online")

ONLINE = "online"
FEATURE_REGISTRY = "feature_registry"
RETRY_PAUSE_SECONDS = 0.5  # after an online store error, reads fail at once for this long


class StoreUnavailable(StreamflowError):
    """A backing store did not answer, or holds nothing to serve yet (``store``: online or feature_registry).
    The API answers 503."""

    def __init__(self, store: str, message: str, *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.store = store


class OnlineReader:
    """Online features through Feast: reads, pushes, the business clock, a health check.

    ``on_error(store)`` is called for every store error (the API counts them); ``refresh_seconds`` is how often
    the background thread (:meth:`start`) re-reads the registry and checks the online store.
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
        self._columnar: dict[str, ColumnarRead | None] = {}  # service -> its columnar read, checked (_split_for)
        self._retry_at = 0.0  # until then reads fail fast: at most one reconnection attempt per pause
        self._store_lock = threading.Lock()
        # reads, pushes and pings share the store's one PostgreSQL connection, and a push's write switches it out
        # of autocommit for its transaction: one at a time
        self._io_lock = threading.Lock()
        self._push_conn: psycopg.Connection | None = None  # the offline record of pushes (under _io_lock)
        self._loop_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None  # read_async's, per event loop
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the store ------------------------------------------------------------------
    def feature_store(self) -> FeatureStore:
        """The Feast store this reader reads and pushes with (built on first use)."""
        store = self._store
        if store is not None:
            return store
        with self._store_lock:
            if self._store is None:
                _quiet_feast()
                try:
                    self._store = FeatureStore(config=ostore.reader_config(self.settings, self.timeout))
                except Exception as exc:
                    if ostore.is_store_error(exc):
                        raise StoreUnavailable(
                            FEATURE_REGISTRY, f"the Feast registry is not reachable ({ostore.first_line(exc)})"
                        ) from None
                    raise
            return self._store

    def _ensure_connection(self) -> None:
        if self.settings.online_store != "postgres":
            return
        online = self.feature_store()._get_provider().online_store
        if getattr(online, "_conn", None) is None:
            online._conn = ostore.connect_postgres(self.feature_store(), self.timeout)

    def _reset(self) -> None:
        if self._store is not None:
            ostore.reset_connections(self._store)
        conn, self._push_conn = self._push_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # broken already
                conn.close()

    @contextlib.contextmanager
    def _io(self, doing: str) -> Iterator[None]:
        """The store's connections for one call; StoreUnavailable when another call holds them longer than the
        online timeout (a stalled store: the caller answers 503 instead of queueing behind it)."""
        if not self._io_lock.acquire(timeout=self.timeout):
            self.on_error(ONLINE)
            raise StoreUnavailable(
                ONLINE, f"the online store is busy or stalled: no answer within {self.timeout:g} s while {doing}"
            )
        try:
            yield
        finally:
            self._io_lock.release()

    def _offline_conn(self) -> psycopg.Connection:
        """The kept connection pushes record their offline row with (connect and statement timeouts)."""
        conn = self._push_conn
        if conn is None or conn.closed:
            conn = self._push_conn = connect(
                self.settings,
                connect_timeout=max(1, round(self.timeout)),
                options=f"-c statement_timeout={int(self.timeout * 1000)}",
                autocommit=True,
            )
        return conn

    def _failed(self, store: str, exc: BaseException, doing: str, *, reset: bool = True) -> StoreUnavailable:
        self.last_error = f"{doing}: {ostore.first_line(exc)}"
        if store == ONLINE:
            self.online_ok = False
            self._retry_at = time.monotonic() + RETRY_PAUSE_SECONDS
            if reset:
                self._reset()
        self.on_error(store)
        log.warning("%s store error while %s (answering 503): %s", store, doing, ostore.first_line(exc))
        what = "online store" if store == ONLINE else "Feast registry"
        return StoreUnavailable(store, f"the {what} did not answer while {doing}; retry shortly")

    # ---- the registry snapshot --------------------------------------------------------
    def catalog(self) -> Catalog:
        """The registry snapshot reads use. Before the first one is read (the background thread keeps trying),
        reads fail at once rather than waiting for the registry."""
        catalog = self._catalog
        if catalog is None:
            raise StoreUnavailable(FEATURE_REGISTRY, "the Feast registry has not been read yet; retry shortly")
        return catalog

    def refresh(self, services: tuple[str, ...] = ()) -> Catalog:
        """Re-read the registry (services, TTLs, business clock), with the layouts of the model's and the product
        teams' services and of ``services``. Raises StoreUnavailable when it is unreachable and no snapshot exists
        (with one, keeps it); FeaturesError naming the known services when one of ``services`` is unknown."""
        try:
            store = self.feature_store()
            store.get_feature_service(self.model_service, allow_cache=False)  # raises when the registry is away
            store.refresh_registry()
            for name in services:
                _service(store, name, cached=True)
            served = self._served_month()
            catalog = read_catalog(store, dict.fromkeys((self.model_service, self.all_service, *services)), served)
        except StoreUnavailable:
            self.on_error(FEATURE_REGISTRY)
            if self._catalog is None:
                raise
            return self._catalog
        except Exception as exc:
            if ostore.is_not_applied(exc):
                self.last_error = ostore.first_line(exc)
                error = StoreUnavailable(
                    FEATURE_REGISTRY,
                    "the feature store is not applied yet "
                    "(run `streamflow features apply` and `streamflow features materialize`)",
                    hint="streamflow features apply",
                )
            elif ostore.is_store_error(exc):
                error = self._failed(FEATURE_REGISTRY, exc, "reading the Feast registry")
            else:
                raise
            if self._catalog is None:
                raise error from None
            return self._catalog
        self._catalog = catalog
        return catalog

    def _served_month(self) -> date | None | bool:
        """The month the run log says the online store serves (the business clock), read with the store's
        timeouts; an unreachable warehouse is a registry error (the last snapshot stays in use)."""
        seconds = max(2, int(self.timeout + 0.999))
        try:
            with connect(
                self.settings, connect_timeout=seconds, options=f"-c statement_timeout={int(self.timeout * 1000)}"
            ) as conn:
                return runlog.served_month(conn, self.settings.feast_project)
        except psycopg.Error as exc:
            self.last_error = f"reading the business clock from the run log: {ostore.first_line(exc)}"
            log.warning("run log error while reading the business clock: %s", ostore.first_line(exc))
            raise StoreUnavailable(
                FEATURE_REGISTRY, "the run log did not answer while reading the business clock; retry shortly"
            ) from None

    def business_clock(self) -> datetime | None:
        """The month the online store serves, as the run log said when the snapshot was read (None: nothing
        yet)."""
        return self.catalog().clock

    # ---- reads ----------------------------------------------------------------------
    def read(self, user_ids: list[str], service: str) -> tuple[list[UserRow], Catalog]:
        """One online read for all ``user_ids`` (in order, duplicates allowed), judged against the clock; with the
        registry snapshot the rows were judged with."""
        catalog = self.catalog()
        if catalog.clock is None:
            raise StoreUnavailable(
                ONLINE,
                "nothing is materialized online yet (run `streamflow features materialize`)",
                hint="streamflow features materialize",
            )
        layout = catalog.services.get(service)
        if layout is None:
            known = ", ".join(sorted(catalog.services))
            raise FeaturesError(f"unknown feature service {service!r}; known: {known}")
        if time.monotonic() < self._retry_at:  # a read failed just now: answer at once, retry after a pause
            raise StoreUnavailable(ONLINE, f"the online store did not answer ({self.last_error}); retry shortly")
        if self._split_for is not catalog:  # a new registry snapshot is checked again
            self._split_ok, self._columnar, self._split_for = {}, {}, catalog
        try:
            with self._io("reading online features"):
                self._ensure_connection()
                data = self._read(self.feature_store(), layout, user_ids)
        except StoreUnavailable:
            raise
        except Exception as exc:
            if not ostore.is_store_error(exc):
                raise
            raise self._failed(ONLINE, exc, "reading online features") from None
        self.online_ok = True
        self._retry_at = 0.0
        return rows_from_response(data, user_ids, layout, catalog), catalog

    def _read(self, store: FeatureStore, layout: ServiceLayout, user_ids: list[str]) -> dict[str, list]:
        verdict = self._split_ok.get(layout.name)
        if verdict is None:  # first read of this snapshot: compare each way with Feast's, keep what agrees
            data = read_whole(store, layout, user_ids)
            self._split_ok[layout.name] = agrees(store, layout, user_ids, data)
            self._columnar[layout.name] = columnar_plan(store, layout, user_ids)
            return data
        if not verdict:
            return read_whole(store, layout, user_ids)
        plan = self._columnar.get(layout.name)
        if plan is None:
            return read_split(store, layout, user_ids)
        online = store._get_provider().online_store
        return derive(layout, online.read_columns(store.config, plan, user_ids))

    # ---- reads on the event loop -----------------------------------------------------------
    def _checked(self, service: str) -> tuple[Catalog, ServiceLayout, ColumnarRead] | None:
        """The snapshot, layout and columnar read of ``service`` when a read of it may go on the event loop: the
        snapshot's first read (in :meth:`read`) checked the columnar read against Feast's, and no store error is
        being waited out."""
        catalog = self._catalog
        if catalog is None or catalog.clock is None or self._split_for is not catalog:
            return None
        layout = catalog.services.get(service)
        if layout is None or not self._split_ok.get(layout.name):
            return None  # a snapshot not checked yet, or a service Feast reads whole
        plan = self._columnar.get(layout.name)
        if plan is None or time.monotonic() < self._retry_at:
            return None
        return catalog, layout, plan

    async def read_async(self, user_ids: list[str], service: str) -> tuple[list[UserRow], Catalog] | None:
        """:meth:`read` without a thread, over the online store's asynchronous connection: the same rows, judged the
        same way, while the event loop goes on. Only once :meth:`read` has checked the snapshot's columnar read
        (None before, or for a store without one: the caller uses :meth:`read`). The whole read, the wait for the
        connection included, is bounded by the online timeout; a store error drops the connection and raises
        StoreUnavailable, as :meth:`read` does."""
        checked = self._checked(service)
        if checked is None:
            return None
        catalog, layout, plan = checked
        store = self.feature_store()
        online = store._get_provider().online_store
        try:
            async with asyncio.timeout(self.timeout):
                async with self._event_loop_lock(online):
                    if online._conn_async is None:
                        online._conn_async = await ostore.connect_postgres_async(store, self.timeout)
                    data = await online.read_columns_async(store.config, plan, user_ids)
        except Exception as exc:
            if not ostore.is_store_error(exc):
                raise
            conn, online._conn_async = online._conn_async, None
            if conn is not None:
                with contextlib.suppress(Exception):  # broken already
                    await conn.close()
            raise self._failed(ONLINE, exc, "reading online features", reset=False) from None
        self.online_ok = True
        return rows_from_response(derive(layout, data), user_ids, layout, catalog), catalog

    def _event_loop_lock(self, online) -> asyncio.Lock:
        """The lock of :meth:`read_async`'s connection, one per event loop (a connection made on another loop is
        dropped)."""
        loop = asyncio.get_running_loop()
        if self._loop_lock is None or self._loop_lock[0] is not loop:
            online._conn_async = None
            self._loop_lock = (loop, asyncio.Lock())
        return self._loop_lock[1]

    def ping(self) -> bool:
        """True when the online store answers now."""
        try:
            store = self.feature_store()
            with self._io("checking the online store"):
                self._ensure_connection()
                ostore.ping(store)
        except StoreUnavailable:
            self.online_ok = False
            return False
        except Exception as exc:
            if not ostore.is_store_error(exc):
                raise
            self._failed(ONLINE, exc, "checking the online store")
            return False
        self.online_ok = True
        self._retry_at = 0.0
        return True

    # ---- pushes ---------------------------------------------------------------------
    def push(
        self, user_id: str, *, watch_minutes_today: float, last_session_at: datetime, event_time: datetime | None
    ) -> PushResult:
        """Push one real-time usage event (online at once, and recorded offline) through the store reads use."""
        with self._io(
            "pushing a usage event"
        ):  # one at a time: the check of the event online and the write go together
            try:
                self._ensure_connection()
                result = push_usage_event(
                    self.settings,
                    user_id,
                    watch_minutes_today=watch_minutes_today,
                    last_session_at=last_session_at,
                    event_time=event_time,
                    store=self.feature_store(),
                    conn=self._offline_conn(),
                )
            except StoreUnavailable:
                raise
            except Exception as exc:
                if not (isinstance(exc, FeaturesError) or ostore.is_store_error(exc)):
                    raise
                raise self._failed(ONLINE, exc, "pushing a usage event") from None
        return result

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


# ---------------------------------------------------------------------------------------
# one-off reads (the CLI, pipelines, tests)
# ---------------------------------------------------------------------------------------
_readers: dict[tuple, OnlineReader] = {}
_readers_lock = threading.Lock()


def online_reader(settings: Settings) -> OnlineReader:
    """The reader of these settings, built once per configuration and kept (no background thread)."""
    key = (*_store_key(settings, False), settings.online_timeout_seconds)
    with _readers_lock:
        reader = _readers.get(key)
        if reader is None:
            reader = _readers[key] = OnlineReader(settings)
    return reader


def online_read(settings: Settings, user_ids: list[str], service: str = ALL_SERVICE) -> list[UserRow]:
    """Many users' features of ``service`` in one online read, judged against the business clock of the registry
    as it is now (the reader's snapshot is refreshed first): the rows the API answers from.

    Raises StoreUnavailable (a StreamflowError) when the feature store is not applied, nothing is materialized
    yet or a store does not answer; FeaturesError for an unknown service.
    """
    reader = online_reader(settings)
    reader.refresh((service,))
    rows, _catalog = reader.read(list(user_ids), service)
    return rows


def online_features(settings: Settings, user_id: str, service: str = ALL_SERVICE) -> UserRow:
    """One user's features of ``service`` (see :func:`online_read`)."""
    return online_read(settings, [user_id], service)[0]
