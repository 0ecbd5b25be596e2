"""The API's telemetry: every request counted and timed by route template, and the app's metric updates.

The metric names are those of :mod:`serving.metrics` (shared with the alert rules and dashboards).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from serving.metrics import ApiMetrics
from serving.model import ServingModel
from serving.responses import INTERNAL_ERROR, JSON
from streamflow.core.db import connect
from streamflow.core.runlog import OpsState, latest_state
from streamflow.core.settings import Settings
from streamflow.features.catalog import UserRow
from streamflow.features.freshness import age_seconds

log = logging.getLogger("streamflow.serving")

OPS_CACHE_SECONDS = 5.0  # pipeline and drift gauges are re-read from the warehouse at most this often
REGISTRY = "registry"  # store label of the model registry in streamflow_store_errors_total
WAREHOUSE = "warehouse"
UNMATCHED = "unmatched"  # route label of requests no route matched (keeps the label set bounded)
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class MetricsMiddleware:
    """Pure ASGI: counts every HTTP request and observes its latency by route template, method and status.

    Also the last resort for unexpected errors: the traceback goes to the log, the client gets a bare JSON 500,
    and the connection stays usable (an exception that reached the server would close it). ``working()`` (a context
    manager, optional) is entered for each request from its start until its answer is sent: the app's count of
    requests in progress, which the shadow scorer waits on."""

    def __init__(
        self, app, metrics: ApiMetrics, working: Callable[[], contextlib.AbstractContextManager] | None = None
    ):
        self.app = app
        self.metrics = metrics
        self.working = working or contextlib.nullcontext
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            with self.working():
                await self.app(scope, receive, send_status)
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if status:  # the answer had begun: nothing more can be said on this connection
                raise
            status = 500
            await _internal_error(send)
        finally:
            self._count(scope, status or 500, time.perf_counter() - started)

    def _count(self, scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or UNMATCHED
        method = scope.get("method", "GET")
        key = (path, method if method in METHODS else "OTHER", status)
        children = self._children.get(key)
        if children is None:
            labels = {"route": key[0], "method": key[1], "status": str(status)}
            children = (self.metrics.requests.labels(**labels), self.metrics.latency.labels(**labels))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


async def _internal_error(send) -> None:
    headers = [(b"content-type", JSON.encode()), (b"content-length", str(len(INTERNAL_ERROR)).encode())]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": INTERNAL_ERROR})


class Telemetry:
    """The app's metric updates, with label children looked up once."""

    def __init__(self, metrics: ApiMetrics):
        self.m = metrics
        self._age: dict[str, Any] = {}
        self._label = {True: metrics.predictions.labels(label="true"), False: metrics.predictions.labels(label="false")}
        self._errors: dict[str, Any] = {}
        self._ops_read = 0.0
        self._ops_lock = threading.Lock()

    def store_error(self, store: str) -> None:
        child = self._errors.get(store)
        if child is None:
            child = self._errors[store] = self.m.store_errors.labels(store=store)
        child.inc()

    def served(self, row: UserRow, stored_views) -> None:
        clock = row.clock
        for view in stored_views:
            ts = row.as_of.get(view)
            if ts is None:
                continue
            gauge = self._age.get(view)
            if gauge is None:
                gauge = self._age[view] = self.m.feature_age.labels(feature_view=view)
            gauge.set(age_seconds(ts, clock))

    def predicted(self, probability: float, label: bool) -> None:
        self.m.probability.observe(probability)
        self._label[label].inc()

    def model_swapped(self, new: ServingModel, old: ServingModel | None) -> None:
        m = self.m
        with warnings.catch_warnings():
            # importing Feast sets PROMETHEUS_MULTIPROC_DIR, which makes clear() warn; this registry is in-process
            warnings.simplefilter("ignore", UserWarning)
            m.model_info.clear()
        m.model_info.labels(
            version=new.version,
            alias=new.alias,
            trained_as_of=new.trained_as_of.isoformat() if new.trained_as_of else "",
        ).set(1)
        try:
            m.model_version.set(float(new.version))
        except ValueError:
            m.model_version.set(0)
        m.model_created.set(new.created.timestamp() if new.created else 0)
        if old is not None:
            m.model_reloads.inc()

    def refresh_ops(self, read_state: Callable[[], OpsState]) -> None:
        """Pipeline and drift gauges from the ops tables, read at most every OPS_CACHE_SECONDS."""
        with self._ops_lock:
            now = time.monotonic()
            if now - self._ops_read < OPS_CACHE_SECONDS:
                return
            self._ops_read = now
            try:
                state = read_state()
            except Exception as exc:  # noqa: BLE001 - the scrape must answer; the gauges keep their last values
                log.warning("could not read pipeline state from the warehouse: %s", exc)
                self.store_error(WAREHOUSE)
                return
            for pipeline, (status, finished) in state.pipelines.items():
                self.m.pipeline_status.labels(pipeline=pipeline).set(1 if status == "success" else 0)
                if finished is not None:
                    self.m.pipeline_last_run.labels(pipeline=pipeline).set(finished.timestamp())
            if state.drift_share is not None:
                self.m.drift_share.set(state.drift_share)
            if state.drift_retrain is not None:
                self.m.drift_detected.set(1 if state.drift_retrain else 0)


def warehouse_ops_state(settings: Settings) -> OpsState:
    """The latest pipeline runs and drift decision from the warehouse's ``ops`` schema."""
    with connect(settings, connect_timeout=2) as conn:
        return latest_state(conn)
