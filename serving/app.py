"""The prediction API: FastAPI on the online features and the champion model. This module only wires.

:func:`create_app` builds the app from its collaborators (settings, an online feature reader, a model
holder), so tests pass real local ones; :func:`app_from_settings` is the factory each uvicorn worker
calls (``uvicorn serving.app:app_from_settings --factory``, or ``streamflow serve``, see
:mod:`serving.run`).

Where things are: the routes in :mod:`serving.routes` (predictions, features, model, operations), the
shared state and dependencies in :mod:`serving.deps`, response bodies in :mod:`serving.responses`,
request validation in :mod:`serving.validation`, metrics in :mod:`serving.telemetry`, the documented
schemas in :mod:`serving.schemas`, the interactive docs (their assets served by the app, no CDN) in
:mod:`serving.docs`. The online read path itself is :mod:`streamflow.features.online`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from threadpoolctl import threadpool_limits

from serving.deps import ServingState
from serving.docs import add_docs
from serving.metrics import ApiMetrics, build_metrics
from serving.model import MlflowModelSource, ModelHolder
from serving.responses import invalid, json_response
from serving.routes import ROUTERS
from serving.shadow import ShadowScorer, shadow_from_settings
from serving.telemetry import REGISTRY, MetricsMiddleware, Telemetry, warehouse_ops_state
from serving.validation import BodyLimit, jsonable
from streamflow.core.db import with_role
from streamflow.core.runlog import OpsState
from streamflow.core.settings import Settings, get_settings
from streamflow.features.online import OnlineReader

log = logging.getLogger("streamflow.serving")

SWITCH_INTERVAL_SECONDS = 0.001  # serving processes: how long a background thread may hold the interpreter

TAGS = [
    {"name": "predictions", "description": "Churn probability of active subscribers, from online features."},
    {"name": "features", "description": "Online features of a subscriber, and real-time usage pushes."},
    {"name": "model", "description": "The model being served."},
    {"name": "operations", "description": "Health, readiness and Prometheus metrics."},
]

DESCRIPTION = """\
Churn predictions for active subscribers, scored by the registry's `champion` model on features read
online from Feast.

Tokens (`Authorization: Bearer <token>`): `/events` and `/admin/*` take the admin token (`STREAMFLOW_API_TOKEN`;
on the embedded stack generated once into `.streamflow/secrets/api_token`, see `streamflow stack env`);
`/predict`, `/predict/batch` and `/features` take the read token (`STREAMFLOW_API_READ_TOKEN`) or the admin token
when a read token is configured, and are open otherwise; `/health`, `/ready`, `/model`, `/metrics` and these docs
are always open. Time is business time: features are judged against the newest materialized month
(the business clock), never the wall clock.

Errors: `404` unknown user (with the missing features), `409` features older than their view's TTL
(with their as_of; never scored), `413` batch over the limit or a body over 1 MiB (refused while it
streams in), `422` invalid body or id, or an event time beyond the business clock, `503` (with
`Retry-After`) online store or model registry unreachable or slower than the online timeout (the service
recovers by itself), `401` missing or wrong bearer token, `403` the read token on a route that takes the admin
token. A champion that fails to load, or needs features the service does not serve, never replaces
the serving model: `/ready` names it in `model_load_failure`.
"""


def _lifespan(state: ServingState, manage_collaborators: bool, tune_process: bool):
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        if manage_collaborators:
            await asyncio.to_thread(state.features.start)
            await asyncio.to_thread(state.models.start)
            if state.shadow is not None:
                await asyncio.to_thread(state.shadow.start)
        if tune_process:
            gc.collect()
            gc.freeze()  # Feast, MLflow and the model: hundreds of thousands of objects no collection needs to visit
            sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        try:
            yield
        finally:
            if manage_collaborators:
                if state.shadow is not None:
                    await asyncio.to_thread(state.shadow.stop)
                await asyncio.to_thread(state.models.stop)
                await asyncio.to_thread(state.features.stop)

    return lifespan


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return json_response({"detail": "internal error"}, 500)


async def _invalid_request(_request: Request, exc: RequestValidationError) -> Response:
    return invalid([{k: jsonable(v) for k, v in e.items() if k != "url"} for e in exc.errors()])


def create_app(
    settings: Settings,
    features: OnlineReader,
    models: ModelHolder,
    *,
    metrics: ApiMetrics | None = None,
    ops_state: Callable[[], OpsState] | None = None,
    shadow: ShadowScorer | None = None,
    manage_collaborators: bool = True,
    tune_process: bool = False,
) -> FastAPI:
    """The API on these collaborators. With ``manage_collaborators`` the app starts their background threads
    (registry refresh, model polling) on startup and stops them on shutdown. ``ops_state`` reads the pipeline
    and drift state exported at /metrics (default: the warehouse's ops tables). ``shadow`` scores the shadow model
    off the request path (:mod:`serving.shadow`; None: no shadow scoring). ``tune_process`` (a serving
    process of its own) freezes the start-up heap out of garbage collection and shortens the interpreter's thread
    switch interval, so background work (registry polls) delays a request by about a millisecond, not five."""
    metrics = metrics or build_metrics()
    telemetry = Telemetry(metrics)
    features.on_error = telemetry.store_error
    models.on_swap = telemetry.model_swapped
    models.on_error = lambda _exc: telemetry.store_error(REGISTRY)
    models.on_load_failure = lambda _failure: metrics.model_load_failures.inc()
    if models.current is not None:
        telemetry.model_swapped(models.current, None)
    state = ServingState(
        settings, features, models, metrics, telemetry, ops_state or (lambda: warehouse_ops_state(settings)), shadow
    )
    if shadow is not None:
        shadow.attach(metrics)
        shadow.wait_idle = state.idle.wait  # the shadow scores between requests, not during them
    app = FastAPI(
        title="StreamFlow prediction API",
        version="1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=_lifespan(state, manage_collaborators, tune_process),
        docs_url=None,  # /docs and /redoc come from serving.docs, with their assets served here (no CDN)
        redoc_url=None,
    )
    add_docs(app)
    models.accept = state.refusal  # a champion needing features the service does not serve never replaces one
    app.state.serving = state
    app.state.settings = settings
    app.state.features = features
    app.state.models = models
    app.state.metrics = metrics
    app.add_middleware(BodyLimit)
    app.add_middleware(MetricsMiddleware, metrics=metrics, working=state.working)
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for router in ROUTERS:
        app.include_router(router)
    return app


def app_from_settings() -> FastAPI:
    """The app of the process-wide settings, for uvicorn workers (``--factory``): Feast online features, the
    MLflow ``champion``, the shadow (unless STREAMFLOW_SHADOW=off), one OpenMP thread (one-row predictions are
    slower with more)."""
    threadpool_limits(limits=1)
    settings = with_role(get_settings(), "api")  # least privilege: the API's own database role
    reader = OnlineReader(settings)
    models = ModelHolder(MlflowModelSource(settings), settings.model_poll_seconds)
    return create_app(settings, reader, models, shadow=shadow_from_settings(settings), tune_process=True)
