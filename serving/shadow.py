"""The shadow model: scored next to the champion, off the request path, into ``ml.shadow_scores``.

The shadow is the registry's alias ``shadow``, else a ``challenger`` the gate did not promote
(:func:`ml.tracking.shadow_of`). It is loaded, compiled and swapped like the champion (:class:`ShadowSource` in a
:class:`serving.model.ModelHolder` of its own; the safe loader, :mod:`ml.model_format`), and dropped when the
registry no longer names one.

A prediction route, once its answer is built, hands what it served (user, business month, the feature vector,
the champion's version and probability) to :meth:`ShadowScorer.offer`: a put into a bounded in-memory queue that
never waits. When the queue is full the prediction is dropped and counted (``streamflow_shadow_dropped_total``).
A background thread takes batches (``STREAMFLOW_SHADOW_BATCH_SIZE`` rows, or what arrived within
``STREAMFLOW_SHADOW_FLUSH_SECONDS``), scores each batch with the shadow's compiled scorer (YIELD_ROWS rows at a
time, each chunk started only once no request is in progress: the app counts a request from its start until its
answer is sent, :meth:`serving.deps.ServingState.working`), keeps one row per (month, user) and upserts them with
one statement (:class:`PostgresShadowWriter`). A batch that cannot be
scored or written is counted (``streamflow_shadow_failed_total``) and logged; the answers never change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

import psycopg

from ml.tracking import shadow_of
from serving.metrics import ApiMetrics
from serving.model import MlflowModelSource, ModelHolder, ServingModel, VersionRef
from streamflow.core.db import connect
from streamflow.core.names import SHADOW, SHADOW_SCORES, SHADOW_SCORES_COLUMNS
from streamflow.core.settings import Settings
from streamflow.features.catalog import UserRow

log = logging.getLogger("streamflow.serving.shadow")

API = "api"  # ml.shadow_scores.source of the rows the API writes
WRITE_TIMEOUT_SECONDS = 10.0  # connect and statement timeout of the shadow writer
YIELD_ROWS = 8  # rows scored between two chances for requests to go first (a chunk: well under a millisecond)
GIVE_WAY_SECONDS = 0.05  # the longest the shadow waits for requests in progress before its next chunk
IDLE_WAIT_SECONDS = 0.2  # how long the worker waits for a first row before checking whether it should stop
COLUMNS = SHADOW_SCORES_COLUMNS
TYPES = ("text", "date", "integer", "double precision", "integer", "double precision", "text", "timestamptz")
UPSERT = (
    f"insert into {SHADOW_SCORES} ({', '.join(COLUMNS)}) "
    f"select * from unnest({', '.join(f'%s::{t}[]' for t in TYPES)}) "
    "on conflict (as_of, shadow_version, source, user_id) do update set "
    "champion_version = excluded.champion_version, champion_probability = excluded.champion_probability, "
    "shadow_probability = excluded.shadow_probability, scored_at = excluded.scored_at"
)

Row = tuple[str, date, int, float, int, float, str, datetime]


@dataclasses.dataclass(frozen=True)
class Served:
    """What a prediction route answered for one user, to be scored in shadow."""

    user_id: str
    as_of: date  # the business month whose online features were served
    values: Mapping[str, Any]  # the exact feature vector the champion scored
    champion_version: str
    champion_probability: float


class ShadowSource(MlflowModelSource):
    """The registry's shadow (:func:`ml.tracking.shadow_of`), loaded and compiled like the champion; the loaded
    model's ``alias`` says which alias made it the shadow (``shadow`` or ``challenger``)."""

    def __init__(self, settings: Settings):
        super().__init__(settings, alias=SHADOW)
        self._alias_of: dict[str, str] = {}

    def current(self) -> VersionRef | None:
        found = shadow_of(self._registry(), self.settings.model_name)
        if found is None:
            return None
        mv, alias = found
        self._alias_of[str(mv.version)] = alias
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC) if mv.creation_timestamp else None
        return VersionRef(str(mv.version), created)

    def load(self, ref: VersionRef) -> ServingModel:
        return dataclasses.replace(super().load(ref), alias=self._alias_of.get(ref.version, SHADOW))


class ShadowQueue:
    """A bounded queue whose producers never wait: :meth:`offer` is False when it is full."""

    def __init__(self, size: int):
        self._queue: queue.Queue[Served] = queue.Queue(maxsize=size)

    def offer(self, item: Served) -> bool:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        return True

    def take(self, most: int, first_wait: float, fill_wait: float, stop: threading.Event | None = None) -> list[Served]:
        """Up to ``most`` items: waits up to ``first_wait`` seconds for the first, then up to ``fill_wait`` seconds
        after it for the rest (fewer when that time runs out, or once ``stop`` is set). Empty when nothing
        arrived."""
        try:
            batch = [self._queue.get(timeout=first_wait) if first_wait > 0 else self._queue.get_nowait()]
        except queue.Empty:
            return []
        deadline = time.monotonic() + fill_wait
        while len(batch) < most:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0 or (stop is not None and stop.is_set()):
                break
            try:
                batch.append(self._queue.get(timeout=min(left, IDLE_WAIT_SECONDS)))
            except queue.Empty:
                continue
        return batch

    def __len__(self) -> int:
        return self._queue.qsize()


def _let_others_run() -> None:
    time.sleep(0)


def shadow_rows(
    batch: Sequence[Served], model: ServingModel, scored_at: datetime, give_way: Callable[[], None] = _let_others_run
) -> list[Row]:
    """The rows of ``batch`` scored by ``model`` (YIELD_ROWS at a time, ``give_way()`` between chunks), one per
    (month, user): the last served wins (the table's key is (as_of, shadow_version, source, user_id), and one
    statement may not update a row twice)."""
    probabilities: list[float] = []
    for start in range(0, len(batch), YIELD_ROWS):
        if start:
            give_way()  # requests go first: between chunks, not after the whole batch
        probabilities.extend(model.proba([s.values for s in batch[start : start + YIELD_ROWS]]))
    version = int(model.version)
    rows: dict[tuple[date, str], Row] = {}
    for served, probability in zip(batch, probabilities, strict=True):
        rows[(served.as_of, served.user_id)] = (
            served.user_id,
            served.as_of,
            int(served.champion_version),
            float(served.champion_probability),
            version,
            float(probability),
            API,
            scored_at,
        )
    return list(rows.values())


class PostgresShadowWriter:
    """Upserts shadow rows into ml.shadow_scores over one kept connection (reopened after an error), one
    statement per batch. The API's role may insert and update that table and nothing else of ``ml``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._conn: psycopg.Connection | None = None

    def __call__(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        columns = [list(c) for c in zip(*rows, strict=True)]
        try:
            conn = self._conn or self._connect()
            with conn.transaction():
                conn.execute(UPSERT, columns)
        except Exception:
            self.close()
            raise

    def _connect(self) -> psycopg.Connection:
        ms = int(WRITE_TIMEOUT_SECONDS * 1000)
        self._conn = connect(
            self.settings,
            connect_timeout=int(WRITE_TIMEOUT_SECONDS),
            autocommit=True,
            options=f"-c statement_timeout={ms} -c lock_timeout={ms}",
        )
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection is dropped either way
                conn.close()


class ShadowScorer:
    """The shadow's queue, its model holder and the thread that scores and writes batches."""

    def __init__(
        self,
        models: ModelHolder,
        write: Callable[[Sequence[Row]], None],
        *,
        queue_size: int,
        batch_size: int,
        flush_seconds: float,
        close: Callable[[], None] | None = None,
    ):
        self.models = models
        self.write = write
        self.queue = ShadowQueue(queue_size)
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self._close = close
        self.written = self.dropped = self.failed = 0
        self._metrics: ApiMetrics | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None
        # blocks until no request is being worked on (or the timeout passes): the shadow waits its turn
        self.wait_idle: Callable[[float], object] = lambda _timeout: None

    @property
    def model(self) -> ServingModel | None:
        return self.models.current

    def attach(self, metrics: ApiMetrics) -> None:
        """Count into these metrics from now on."""
        self._metrics = metrics
        self.export()

    def offer(self, row: UserRow, champion_version: str, probability: float) -> None:
        """Queue what a route answered for scoring in shadow (nothing while no shadow is loaded). Never waits:
        a full queue drops the row and counts it."""
        if self.models.current is None:
            return
        if not self.queue.offer(Served(row.user_id, row.clock.date(), row.values, champion_version, probability)):
            self.dropped += 1
            if self._metrics is not None:
                self._metrics.shadow_dropped.inc()

    def _give_way(self) -> None:
        """Wait until no request is being worked on (``wait_idle``, at most GIVE_WAY_SECONDS), then let others
        run: the shadow's chunks fill the gaps between requests."""
        self.wait_idle(GIVE_WAY_SECONDS)
        time.sleep(0)

    def flush(self, batch: Sequence[Served]) -> int:
        """Score ``batch`` with the shadow and write it; returns the rows written (0 when it failed, counted)."""
        model = self.models.current
        if model is None:
            return 0  # the shadow was removed meanwhile: nothing to compare with
        missing = [f for f in model.features if f not in batch[0].values]
        try:
            if missing:
                raise ValueError(f"shadow v{model.version} needs features the served rows lack: {missing}")
            rows = shadow_rows(batch, model, datetime.now(UTC), self._give_way)
            self._give_way()
            self.write(rows)
        except Exception as exc:  # noqa: BLE001 - shadow scoring never affects the service: count, log, go on
            self._failed(len(batch), exc)
            return 0
        self._last_error = None
        self.written += len(rows)
        if self._metrics is not None:
            self._metrics.shadow_rows.inc(len(rows))
        return len(rows)

    def _failed(self, count: int, exc: BaseException) -> None:
        self.failed += count
        if self._metrics is not None:
            self._metrics.shadow_failed.inc(count)
        text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if text != self._last_error:  # once per distinct error, not once per batch
            log.warning("%d shadow rows not written (the answers were not affected): %s", count, text)
        self._last_error = text

    def export(self) -> None:
        """The shadow version gauge (0: no shadow)."""
        if self._metrics is None:
            return
        model = self.models.current
        try:
            self._metrics.shadow_version.set(float(model.version) if model is not None else 0)
        except ValueError:
            self._metrics.shadow_version.set(0)

    def start(self) -> None:
        """Load the shadow (and poll for it), then start the worker thread."""
        if self._thread is not None:
            return
        self.models.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            wait = 0 if stopping else IDLE_WAIT_SECONDS
            batch = self.queue.take(self.batch_size, wait, self.flush_seconds, self._stop)
            if batch:
                self.flush(batch)
            elif stopping:
                return

    def stop(self, timeout: float = 30) -> None:
        """Write what is queued (within ``timeout``), then stop the thread and the polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
        self.models.stop()
        if self._close is not None:
            self._close()


def shadow_from_settings(settings: Settings) -> ShadowScorer | None:
    """The API's shadow scorer for these settings (None when STREAMFLOW_SHADOW is off)."""
    if not settings.shadow:
        return None
    holder = ModelHolder(ShadowSource(settings), settings.model_poll_seconds, clear_when_absent=True)
    writer = PostgresShadowWriter(settings)
    return ShadowScorer(
        holder,
        writer,
        queue_size=settings.shadow_queue_size,
        batch_size=settings.shadow_batch_size,
        flush_seconds=settings.shadow_flush_seconds,
        close=writer.close,
    )
