"""Helpers for the API's tests: run an app over HTTP on loopback, and local collaborators for the unit tests.

The unit tests need no services: :class:`MemoryFeatures` holds online rows in memory and answers through the
same business-time rules as the Feast reader (``streamflow.features.catalog.rows_from_response``), and
:class:`LocalModels` serves scikit-learn pipelines fitted here through the same compiled scorer as the
registry's. The integration tests use the real Feast, PostgreSQL and MLflow instead.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import uvicorn
from threadpoolctl import threadpool_limits

from ml.train import build_pipeline
from serving.model import ServingModel, VersionRef
from serving.scorer import compile_scorer
from streamflow.features.catalog import Catalog, ServiceLayout, UserRow, rows_from_response
from streamflow.features.online import ONLINE, StoreUnavailable
from streamflow.features.push import PushResult

CLOCK = datetime(2024, 3, 31, tzinfo=UTC)
MONTH_TTL = timedelta(days=35)
PROFILE = ("contract_type", "months_active", "monthly_fee", "paperless_billing")
USAGE = ("watch_hours_30d", "unique_devices_30d")
PUSHED = ("watch_minutes_today",)
MODEL_FEATURES = [*PROFILE, *USAGE]
NUMERIC = ["months_active", "monthly_fee", "paperless_billing", "watch_hours_30d", "unique_devices_30d"]
CATEGORICAL = ["contract_type"]
CONTRACTS = ["Month-to-month", "One year", "Two year"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app, timeout: float = 120) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free loopback port in a daemon thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the app failed to start (see the log above)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the app did not start within {timeout} s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


# ---------------------------------------------------------------------------------------
# a feature client in memory
# ---------------------------------------------------------------------------------------
def _layout(name: str, views: dict[str, tuple[str, ...]], derived: dict[str, tuple[str, ...]]) -> ServiceLayout:
    pairs = tuple((view, f) for view, names in views.items() for f in names)
    features_of: dict[str, tuple[str, ...]] = dict(views)
    return ServiceLayout(
        name=name,
        service=None,
        pairs=pairs,
        stored=tuple(v for v in views if v not in derived),
        derived=derived,
        timestamp_key={v: names[0] + "__ts" for v, names in views.items() if v not in derived},
        features_of=features_of,
    )


class MemoryFeatures:
    """Online rows in memory: ``rows[user][view] = (as_of, {feature: value})``. ``down = True`` makes every call
    fail as an unreachable store does; ``broken`` makes reads raise it (an unexpected error). ``on_loop = True``
    lets /predict read on the event loop (:meth:`read_async`), as the real reader does once a snapshot is checked;
    by default it reads in the worker thread, where subclasses may stall."""

    model_service = "churn_model_v1"
    all_service = "customer_360"

    def __init__(self, clock: datetime | None = CLOCK):
        self.rows: dict[str, dict[str, tuple[datetime, dict[str, Any]]]] = {}
        self.clock = clock
        self.down = False
        self.broken: Exception | None = None
        self.online_ok = True
        self.last_error: str | None = None
        self.reads = 0
        self.on_loop = False
        self.on_error = lambda _store: None
        model = _layout(self.model_service, {"profile": PROFILE, "usage": USAGE}, {})
        everything = _layout(self.all_service, {"profile": PROFILE, "usage": USAGE, "realtime": PUSHED}, {})
        self._catalog = Catalog(
            services={self.model_service: model, self.all_service: everything},
            ttls={"profile": MONTH_TTL, "usage": MONTH_TTL, "realtime": timedelta(days=1)},
            pushed=frozenset({"realtime"}),
            clock=clock,
            read_at=time.monotonic(),
        )

    def add(self, user: str, values: dict[str, Any], as_of: datetime = CLOCK, views=("profile", "usage")) -> None:
        for view in views:
            names = PROFILE if view == "profile" else USAGE
            self.rows.setdefault(user, {})[view] = (as_of, {f: values[f] for f in names})

    def _unavailable(self, doing: str) -> StoreUnavailable:
        self.online_ok = False
        self.last_error = f"{doing}: connection refused"
        self.on_error(ONLINE)
        return StoreUnavailable(ONLINE, f"the online store did not answer while {doing}; retry shortly")

    def catalog(self) -> Catalog:
        return self._catalog

    def business_clock(self) -> datetime | None:
        return self.clock

    def read(self, user_ids: list[str], service: str) -> tuple[list[UserRow], Catalog]:
        self.reads += 1
        if self.broken is not None:
            raise self.broken
        if self.down:
            raise self._unavailable("reading online features")
        layout = self._catalog.services[service]
        data: dict[str, list] = {}
        for view, key in layout.timestamp_key.items():
            data[key] = [
                int(self.rows.get(u, {}).get(view, (None,))[0].timestamp()) if view in self.rows.get(u, {}) else 0
                for u in user_ids
            ]
        for view, feature in layout.pairs:
            data[feature] = [self.rows.get(u, {}).get(view, (None, {}))[1].get(feature) for u in user_ids]
        self.online_ok = True
        return rows_from_response(data, user_ids, layout, self._catalog), self._catalog

    async def read_async(self, user_ids: list[str], service: str) -> tuple[list[UserRow], Catalog] | None:
        return self.read(user_ids, service) if self.on_loop else None

    def push(
        self, user_id: str, *, watch_minutes_today: float, last_session_at: datetime, event_time: datetime | None
    ) -> PushResult:
        if self.down:
            raise self._unavailable("pushing a usage event")
        when = event_time or last_session_at
        current = self.rows.get(user_id, {}).get("realtime")
        online = current is None or when >= current[0]
        if online:
            self.rows.setdefault(user_id, {})["realtime"] = (when, {"watch_minutes_today": watch_minutes_today})
        return PushResult(user_id, when, online)

    def ping(self) -> bool:
        self.online_ok = not self.down
        return self.online_ok

    def refresh(self) -> Catalog:
        return self._catalog

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


# ---------------------------------------------------------------------------------------
# models fitted here
# ---------------------------------------------------------------------------------------
def training_frame(n: int = 600, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Subscribers with a churn label that depends on contract, tenure, fee and viewing."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "contract_type": rng.choice(CONTRACTS, n),
            "months_active": rng.integers(0, 72, n),
            "monthly_fee": rng.uniform(18, 120, n).round(2),
            "paperless_billing": rng.random(n) < 0.6,
            "watch_hours_30d": rng.gamma(2.0, 10.0, n),
            "unique_devices_30d": rng.integers(1, 5, n),
        }
    )
    score = (
        1.5 * (frame["contract_type"] == "Month-to-month")
        - 0.04 * frame["months_active"]
        + 0.02 * frame["monthly_fee"]
        - 0.03 * frame["watch_hours_30d"]
        + rng.normal(0, 0.5, n)
    )
    return frame, (score > score.median()).to_numpy()


def fitted_pipeline(family: str = "hist_gradient_boosting", seed: int = 0):

    frame, y = training_frame(seed=seed)
    with threadpool_limits(limits=1):  # OpenMP threads only spin against other work on a small shared machine
        return build_pipeline(family, NUMERIC, CATEGORICAL, seed).fit(frame[MODEL_FEATURES], y)


def serving_model(
    version: str, family: str = "hist_gradient_boosting", seed: int = 0, threshold: float = 0.5
) -> ServingModel:
    pipeline = fitted_pipeline(family, seed)
    return ServingModel(
        name="local_churn",
        version=version,
        alias="champion",
        run_id=f"run-{version}",
        threshold=threshold,
        features=list(MODEL_FEATURES),
        scorer=compile_scorer(pipeline, list(MODEL_FEATURES)),
        metrics={"roc_auc": 0.8},
        trained_as_of=CLOCK.date(),
        created=CLOCK,
    )


class LocalModels:
    """A model registry in memory: ``alias`` names the version behind ``champion``; ``fail`` makes every call
    raise as an unreachable registry does."""

    alias = "champion"

    def __init__(self, models: dict[str, ServingModel], alias: str | None):
        self.models = models
        self.version = alias
        self.fail = False
        self.loads = 0

    def current(self) -> VersionRef | None:
        if self.fail:
            raise ConnectionError("the registry is not reachable")
        return VersionRef(self.version, CLOCK) if self.version else None

    def load(self, ref: VersionRef) -> ServingModel:
        if self.fail:
            raise ConnectionError("the registry is not reachable")
        self.loads += 1
        return self.models[ref.version]


def user_values(i: int = 0) -> dict[str, Any]:
    return {
        "contract_type": CONTRACTS[i % 3],
        "months_active": 3 + i,
        "monthly_fee": 70.5 + i,
        "paperless_billing": bool(i % 2),
        "watch_hours_30d": 12.25 + i,
        "unique_devices_30d": 1 + i % 3,
    }
