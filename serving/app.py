"""The prediction API: FastAPI on the online features and the champion model.

:func:`create_app` builds the app from its collaborators (settings, an online feature client, a model
holder), so tests pass real local ones; :func:`app_from_settings` is the factory each uvicorn worker
calls (``uvicorn serving.app:app_from_settings --factory``, or ``streamflow serve``).

The hot routes (/predict, /predict/batch) validate the body before any I/O, do one online read,
score with the compiled model and answer pre-serialized JSON; the documented schemas are the pydantic
models of :mod:`serving.schemas`. Errors are JSON with a ``detail``; an unexpected error is logged with
its traceback and answered as a bare 500 without internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import math
import sys
import threading
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, StringConstraints, TypeAdapter, ValidationError

from serving import schemas
from serving.metrics import ApiMetrics, build_metrics
from streamflow.drops.contract import ID_PATTERN

if TYPE_CHECKING:
    from serving.features import FeastOnlineFeatures, UserRow
    from serving.model import ModelHolder, ServingModel
    from streamflow.core.runlog import OpsState
    from streamflow.core.settings import Settings

log = logging.getLogger("streamflow.serving")

JSON = "application/json"
MAX_BODY_BYTES = 1 << 20  # larger bodies are refused with 413 before they are parsed
OPS_CACHE_SECONDS = 5.0  # pipeline and drift gauges are re-read from the warehouse at most this often
REGISTRY = "registry"  # store label of the model registry in streamflow_store_errors_total
WAREHOUSE = "warehouse"
UNMATCHED = "unmatched"  # route label of requests no route matched (keeps the label set bounded)
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
SWITCH_INTERVAL_SECONDS = 0.001  # serving processes: how long a background thread may hold the interpreter


# ---------------------------------------------------------------------------------------
# JSON rendering
# ---------------------------------------------------------------------------------------
_iso_cache: dict[datetime, str] = {}


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 with a Z for UTC; the handful of distinct month ends are formatted once."""
    if ts is None:
        return None
    text = _iso_cache.get(ts)
    if text is None:
        text = ts.isoformat().replace("+00:00", "Z")
        if len(_iso_cache) < 4096:
            _iso_cache[ts] = text
    return text


def plain(value: Any) -> Any:
    """A feature value as JSON can carry it: datetimes as ISO text, NaN and infinities as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return iso(value)
    return value


def dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status, media_type=JSON, headers=headers)


def _features_body(row: UserRow, names: list[str]) -> dict[str, dict[str, Any]]:
    values, view_of, as_of, flagged = row.values, row.view_of, row.as_of, row.verdict.flagged
    out = {}
    for name in names:
        view = view_of[name]
        out[name] = {
            "value": plain(values[name]),
            "feature_view": view,
            "as_of": iso(as_of[view]),
            "stale": view in flagged,
        }
    return out


def _stale_views(row: UserRow, ttls: dict[str, timedelta | None], features_of) -> list[dict[str, Any]]:
    out = []
    for view, ts in row.verdict.stale.items():
        ttl = ttls.get(view)
        out.append(
            {
                "feature_view": view,
                "as_of": iso(ts),
                "ttl_seconds": ttl.total_seconds() if ttl else 0.0,
                "age_seconds": (row.clock - ts).total_seconds(),
                "features": list(features_of.get(view, ())),
            }
        )
    return out


def _unknown(row: UserRow) -> dict[str, Any]:
    clock = row.clock.date().isoformat()
    found = any(ts is not None for ts in row.as_of.values())
    detail = (
        (
            f"user {row.user_id} has no online features: not an active subscriber at the business clock {clock}, "
            "or an unknown id"
        )
        if not found
        else (
            f"user {row.user_id} lacks online values of {len(row.verdict.missing)} feature(s) at the business clock "
            f"{clock}"
        )
    )
    return {"detail": detail, "user_id": row.user_id, "missing_features": list(row.verdict.missing)}


def _stale(row: UserRow, ttls, features_of) -> dict[str, Any]:
    return {
        "detail": f"features of user {row.user_id} are older than their TTL at the business clock "
        f"{row.clock.date().isoformat()}: refused, not scored",
        "user_id": row.user_id,
        "business_clock": iso(row.clock),
        "stale": _stale_views(row, ttls, features_of),
    }


def _unavailable(detail: str, store: str) -> Response:
    return json_response({"detail": detail, "store": store}, 503, headers={"Retry-After": "5"})


# ---------------------------------------------------------------------------------------
# request validation (before any I/O)
# ---------------------------------------------------------------------------------------
class _BatchShape(BaseModel):
    """The batch body's shape only: the ids are checked after the size (413 before 422 per id)."""

    model_config = {"extra": "forbid"}
    user_ids: list[str] = Field(min_length=1)


_IDS = TypeAdapter(list[Annotated[str, StringConstraints(pattern=ID_PATTERN)]])


class _BodyTooLarge(Exception):
    pass


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _BodyTooLarge
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise _BodyTooLarge
    return body


def _jsonable(value: Any) -> Any:
    """An error's input or context as JSON can carry it (bytes that are not UTF-8 included)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if value is None or isinstance(value, str | int | bool) or (isinstance(value, float) and math.isfinite(value)):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _validation_errors(exc: ValidationError, *prefix: str | int) -> list[dict[str, Any]]:
    return [
        {
            "type": e["type"],
            "loc": ["body", *prefix, *e.get("loc", ())],
            "msg": e["msg"],
            "input": _jsonable(e.get("input")),
            **({"ctx": _jsonable(e["ctx"])} if "ctx" in e else {}),
        }
        for e in exc.errors(include_url=False)
    ]


def _invalid(errors: list[dict[str, Any]]) -> Response:
    return json_response({"detail": errors}, 422)


def _too_large(detail: str) -> Response:
    return json_response({"detail": detail}, 413)


# ---------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------
INTERNAL_ERROR = dumps({"detail": "internal error"})


class MetricsMiddleware:
    """Pure ASGI: counts every HTTP request and observes its latency by route template, method and status.

    Also the last resort for unexpected errors: the traceback goes to the log, the client gets a bare JSON 500,
    and the connection stays usable (an exception that reached the server would close it)."""

    def __init__(self, app, metrics: ApiMetrics):
        self.app = app
        self.metrics = metrics
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
            await self.app(scope, receive, send_status)
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if status:  # the answer had begun: nothing more can be said on this connection
                raise
            status = 500
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", JSON.encode()),
                        (b"content-length", str(len(INTERNAL_ERROR)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": INTERNAL_ERROR})
        finally:
            status = status or 500
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
            children[1].observe(time.perf_counter() - started)


class _Telemetry:
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
            gauge.set(max((clock - ts).total_seconds(), 0.0))

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
    from streamflow.core.db import connect
    from streamflow.core.runlog import latest_state

    with connect(settings, connect_timeout=2) as conn:
        return latest_state(conn)


# ---------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------
TAGS = [
    {"name": "predictions", "description": "Churn probability of active subscribers, from online features."},
    {"name": "features", "description": "Online features of a subscriber, and real-time usage pushes."},
    {"name": "model", "description": "The model being served."},
    {"name": "operations", "description": "Health, readiness and Prometheus metrics."},
]

DESCRIPTION = """\
Churn predictions for active subscribers, scored by the registry's `champion` model on features read
online from Feast. Time is business time: features are judged against the newest materialized month
(the business clock), never the wall clock.

Errors: `404` unknown user (with the missing features), `409` features older than their view's TTL
(with their as_of; never scored), `413` batch over the limit, `422` invalid body or id, `503` online
store or model registry unreachable (the service recovers by itself), `401` missing or wrong bearer
token on `/events` and `/admin/*` when a token is configured.
"""


def _request_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {JSON: {"schema": schema}}}}


def _responses(**codes: tuple[type[BaseModel], str]) -> dict[int | str, dict[str, Any]]:
    return {int(code.lstrip("_")): {"model": model, "description": text} for code, (model, text) in codes.items()}


ValidationFailed = (schemas.ErrorBody, "Invalid body or id format.")
NotReady = (schemas.Unavailable, "Online store or model registry unreachable, or no model loaded yet.")
Unauthorized = (schemas.ErrorBody, "Missing or wrong bearer token (only when STREAMFLOW_API_TOKEN is set).")


def create_app(
    settings: Settings,
    features: FeastOnlineFeatures,
    models: ModelHolder,
    *,
    metrics: ApiMetrics | None = None,
    ops_state: Callable[[], OpsState] | None = None,
    manage_collaborators: bool = True,
    tune_process: bool = False,
) -> FastAPI:
    """The API on these collaborators. With ``manage_collaborators`` the app starts their background threads
    (registry refresh, model polling) on startup and stops them on shutdown. ``ops_state`` reads the pipeline
    and drift state exported at /metrics (default: the warehouse's ops tables). ``tune_process`` (a serving
    process of its own) freezes the start-up heap out of garbage collection and shortens the interpreter's thread
    switch interval, so background work (registry polls) delays a request by about a millisecond, not five."""
    metrics = metrics or build_metrics()
    read_ops = ops_state or (lambda: warehouse_ops_state(settings))
    telemetry = _Telemetry(metrics)
    features.on_error = telemetry.store_error
    models.on_swap = telemetry.model_swapped
    models.on_error = lambda _exc: telemetry.store_error(REGISTRY)
    if models.current is not None:
        telemetry.model_swapped(models.current, None)
    token = settings.api_token.get_secret_value().encode() if settings.api_token else None
    batch_limit = settings.batch_limit
    model_service, all_service = features.model_service, features.all_service
    missing_inputs: dict[tuple, list[str]] = {}  # (model, version, service layout) -> inputs it does not serve

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        if manage_collaborators:
            await asyncio.to_thread(features.start)
            await asyncio.to_thread(models.start)
        if tune_process:
            gc.collect()
            gc.freeze()  # Feast, MLflow and the model: hundreds of thousands of objects no collection needs to visit
            sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        try:
            yield
        finally:
            if manage_collaborators:
                await asyncio.to_thread(models.stop)
                await asyncio.to_thread(features.stop)

    app = FastAPI(
        title="StreamFlow prediction API",
        version="1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.features = features
    app.state.models = models
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    # ---- errors ---------------------------------------------------------------------
    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return json_response({"detail": "internal error"}, 500)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> Response:
        return _invalid([{k: _jsonable(v) for k, v in e.items() if k != "url"} for e in exc.errors()])

    # ---- auth -----------------------------------------------------------------------
    bearer = HTTPBearer(auto_error=False, description="The token in STREAMFLOW_API_TOKEN (only checked when set).")

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, token):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    Authorized = Depends(require_token)

    # ---- helpers --------------------------------------------------------------------
    def model_or_503() -> ServingModel | Response:
        model = models.current
        if model is None:
            return _unavailable(f"no model loaded yet ({models.last_error or 'waiting for the registry'})", REGISTRY)
        return model

    def read(user_ids: list[str], service: str) -> tuple[list[UserRow], Any] | Response:
        from serving.features import StoreUnavailable

        try:
            return features.read(user_ids, service)
        except StoreUnavailable as exc:
            return _unavailable(str(exc), exc.store)

    def inputs_missing(model: ServingModel, layout) -> list[str]:
        key = (model.name, model.version, layout.pairs)
        absent = missing_inputs.get(key)
        if absent is None:
            served = set(layout.features)
            absent = missing_inputs[key] = [f for f in model.features if f not in served]
        return absent

    def prediction(model: ServingModel, row: UserRow, probability: float) -> dict[str, Any]:
        churn = probability >= model.threshold
        telemetry.predicted(probability, churn)
        return {
            "user_id": row.user_id,
            "churn_probability": probability,
            "churn": churn,
            "threshold": model.threshold,
            "model_version": model.version,
            "features_as_of": iso(row.oldest),
            "features": _features_body(row, model.features),
        }

    # ---- predictions ----------------------------------------------------------------
    @app.post(
        "/predict",
        tags=["predictions"],
        summary="Churn probability of one user",
        response_model=schemas.Prediction,
        responses=_responses(
            _404=(schemas.UnknownUser, "Unknown user: no current online values; names the missing features."),
            _409=(schemas.StaleFeatures, "Features older than their view's TTL at the business clock: not scored."),
            _413=(schemas.ErrorBody, "Body too large."),
            _422=ValidationFailed,
            _503=NotReady,
        ),
        openapi_extra=_request_body(schemas.PredictRequest),
    )
    async def predict(request: Request) -> Response:
        """Reads the user's churn_model_v1 features online (one read), refuses stale or missing ones, and scores
        them with the serving model at its logged threshold. The answer names the model version and every
        feature used with its as_of."""
        try:
            user_id = schemas.PredictRequest.model_validate_json(await _body(request)).user_id
        except _BodyTooLarge:
            return _too_large(f"body larger than {MAX_BODY_BYTES} bytes")
        except ValidationError as exc:
            return _invalid(_validation_errors(exc))
        model = model_or_503()
        if isinstance(model, Response):
            return model
        result = read([user_id], model_service)
        if isinstance(result, Response):
            return result
        (row,), catalog = result
        layout = catalog.services[model_service]
        if row.verdict.missing:
            return json_response(_unknown(row), 404)
        if row.verdict.stale:
            return json_response(_stale(row, catalog.ttls, layout.features_of), 409)
        absent = inputs_missing(model, layout)
        if absent:
            return _unavailable(
                f"model v{model.version} needs features {model_service} does not serve: {absent}", "online"
            )
        probability = float(model.proba([row.values])[0])
        telemetry.served(row, layout.stored)
        return json_response(prediction(model, row, probability))

    @app.post(
        "/predict/batch",
        tags=["predictions"],
        summary="Churn probabilities of many users (one online read)",
        response_model=schemas.BatchPrediction,
        responses=_responses(
            _413=(schemas.ErrorBody, "More user ids than the configured batch limit, or a body too large."),
            _422=ValidationFailed,
            _503=NotReady,
        ),
        openapi_extra=_request_body(schemas.BatchPredictRequest),
    )
    async def predict_batch(request: Request) -> Response:
        """Every user is answered: predictions for users with current features, and per-user errors (404 unknown,
        409 stale) for the others. All predictions come from the same model version."""
        try:
            shape = _BatchShape.model_validate_json(await _body(request))
        except _BodyTooLarge:
            return _too_large(f"body larger than {MAX_BODY_BYTES} bytes")
        except ValidationError as exc:
            return _invalid(_validation_errors(exc))
        if len(shape.user_ids) > batch_limit:
            return _too_large(f"{len(shape.user_ids)} user ids; the limit is {batch_limit} per request")
        try:
            user_ids = _IDS.validate_python(shape.user_ids)
        except ValidationError as exc:
            return _invalid(_validation_errors(exc, "user_ids"))
        model = model_or_503()
        if isinstance(model, Response):
            return model
        result = read(user_ids, model_service)
        if isinstance(result, Response):
            return result
        rows, catalog = result
        layout = catalog.services[model_service]
        absent = inputs_missing(model, layout)
        if absent:
            return _unavailable(
                f"model v{model.version} needs features {model_service} does not serve: {absent}", "online"
            )
        scorable, errors = [], []
        for row in rows:
            if row.verdict.missing:
                errors.append({**_unknown(row), "status": 404})
            elif row.verdict.stale:
                body = _stale(row, catalog.ttls, layout.features_of)
                errors.append({"user_id": row.user_id, "status": 409, "detail": body["detail"], "stale": body["stale"]})
            else:
                scorable.append(row)
        predictions = []
        if scorable:
            probabilities = model.proba([row.values for row in scorable])
            for row, probability in zip(scorable, probabilities, strict=True):
                predictions.append(prediction(model, row, float(probability)))
            telemetry.served(scorable[-1], layout.stored)
        return json_response({"model_version": model.version, "predictions": predictions, "errors": errors})

    # ---- features -------------------------------------------------------------------
    @app.get(
        "/features/{user_id}",
        tags=["features"],
        summary="Every online feature of one user (customer_360)",
        response_model=schemas.UserFeatures,
        responses=_responses(
            _404=(schemas.UnknownUser, "Unknown user: names the missing features."),
            _409=(schemas.StaleFeatures, "Month-end features older than their view's TTL at the business clock."),
            _422=ValidationFailed,
            _503=NotReady,
        ),
    )
    async def user_features(
        user_id: Annotated[
            str, Path(pattern=ID_PATTERN, description="A user id like 7590-VHVEG.", examples=[schemas.EXAMPLE_USER])
        ],
    ) -> Response:
        """Values with their feature view and as_of. Pushed real-time values older than their TTL are shown
        with ``stale: true``; month-end values older than their TTL refuse the request (409)."""
        result = read([user_id], all_service)
        if isinstance(result, Response):
            return result
        (row,), catalog = result
        layout = catalog.services[all_service]
        if row.verdict.missing:
            return json_response(_unknown(row), 404)
        if row.verdict.stale:
            return json_response(_stale(row, catalog.ttls, layout.features_of), 409)
        telemetry.served(row, layout.stored)
        return json_response(
            {
                "user_id": row.user_id,
                "service": all_service,
                "business_clock": iso(row.clock),
                "features": _features_body(row, layout.features),
            }
        )

    @app.post(
        "/events",
        tags=["features"],
        summary="Push real-time usage (through the Feast PushSource)",
        response_model=schemas.EventAccepted,
        responses=_responses(_401=Unauthorized, _422=ValidationFailed, _503=NotReady),
        dependencies=[Authorized],
    )
    def push_event(event: schemas.UsageEvent) -> Response:
        """The event is online at once (``usage_realtime``, shown by /features) and recorded offline. An event
        older than the one already online is recorded offline only (``online: false``)."""
        from serving.features import StoreUnavailable

        try:
            outcome = features.push(
                event.user_id,
                watch_minutes_today=event.watch_minutes_today,
                last_session_at=event.last_session_at,
                event_time=event.event_time,
            )
        except StoreUnavailable as exc:
            return _unavailable(str(exc), exc.store)
        return json_response(
            {
                "user_id": outcome.user_id,
                "accepted": True,
                "online": outcome.online,
                "event_time": iso(outcome.event_time.astimezone(UTC)),
            }
        )

    # ---- the model ------------------------------------------------------------------
    def model_body(model: ServingModel) -> dict[str, Any]:
        return {
            "name": model.name,
            "version": model.version,
            "alias": model.alias,
            "run_id": model.run_id,
            "trained_as_of": model.trained_as_of.isoformat() if model.trained_as_of else None,
            "threshold": model.threshold,
            "metrics": {k: v for k, v in model.metrics.items() if math.isfinite(v)},
            "features": model.features,
            "registered_at": iso(model.created),
            "scorer": model.scorer.kind,
        }

    @app.get(
        "/model",
        tags=["model"],
        summary="The serving model",
        response_model=schemas.ModelInfo,
        responses=_responses(_503=NotReady),
    )
    async def model_info() -> Response:
        """Version, alias, validation metrics, decision threshold, trained as_of and inputs of the model answering
        predictions now."""
        model = model_or_503()
        if isinstance(model, Response):
            return model
        return json_response(model_body(model))

    @app.post(
        "/admin/model/reload",
        tags=["model"],
        summary="Check the registry alias now",
        response_model=schemas.ModelReload,
        responses=_responses(_401=Unauthorized),
        dependencies=[Authorized],
    )
    def reload_model() -> Response:
        """Polls the registry at once instead of waiting for the next poll (STREAMFLOW_MODEL_POLL_SECONDS)."""
        changed = models.poll()
        current = models.current
        return json_response(
            {
                "changed": changed,
                "version": current.version if current else None,
                "registry": models.registry_ok,
                "detail": models.last_error,
            }
        )

    # ---- operations -----------------------------------------------------------------
    health_body = dumps({"status": "ok"})

    @app.get("/health", tags=["operations"], summary="The process is up", response_model=schemas.Health)
    async def health() -> Response:
        return Response(health_body, media_type=JSON)

    def readiness() -> tuple[bool, dict[str, Any]]:
        from serving.features import StoreUnavailable

        detail: dict[str, str] = {}
        online = features.ping()
        clock = None
        try:
            clock = features.business_clock()
        except StoreUnavailable as exc:
            detail["feature_registry"] = str(exc)
        if not online:
            detail["online_store"] = features.last_error or "the online store does not answer"
        elif clock is None:
            online = False
            detail.setdefault("online_store", "nothing is materialized online yet")
        model = models.current
        if model is None:
            detail["model"] = models.last_error or "no model loaded yet"
        if not models.registry_ok and models.last_error:
            detail["registry"] = models.last_error
        ready = model is not None and online
        metrics.ready.set(1 if ready else 0)
        return ready, {
            "ready": ready,
            "model_loaded": model is not None,
            "online_store": online,
            "registry": models.registry_ok,
            "model_version": model.version if model else None,
            "business_clock": iso(clock),
            "detail": detail,
        }

    @app.get(
        "/ready",
        tags=["operations"],
        summary="Model loaded and online store answering",
        response_model=schemas.Readiness,
        responses={503: {"model": schemas.Readiness, "description": "Not ready: see `detail`."}},
    )
    def ready() -> Response:
        """200 when a model is loaded and the online store answers with a materialized month; 503 otherwise."""
        ok, body = readiness()
        return json_response(body, 200 if ok else 503)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition."}},
    )
    def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        telemetry.refresh_ops(read_ops)
        metrics.ready.set(1 if models.current is not None and features.online_ok else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_settings() -> FastAPI:
    """The app of the process-wide settings, for uvicorn workers (``--factory``): Feast online features, the
    MLflow ``champion``, one OpenMP thread (one-row predictions are slower with more)."""
    from threadpoolctl import threadpool_limits

    from serving.features import FeastOnlineFeatures
    from serving.model import MlflowModelSource, ModelHolder
    from streamflow.core.settings import get_settings

    threadpool_limits(limits=1)
    settings = get_settings()
    features = FeastOnlineFeatures(settings)
    models = ModelHolder(MlflowModelSource(settings), settings.model_poll_seconds)
    return create_app(settings, features, models, tune_process=True)


# ---------------------------------------------------------------------------------------
# running it
# ---------------------------------------------------------------------------------------
def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int,
    access_log: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the API with uvicorn (uvloop and httptools when installed) until interrupted. ``on_ready(base_url)``
    runs in a thread once /ready answers 200 (used to print an example request)."""
    import uvicorn

    if on_ready is not None:
        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        threading.Thread(target=_when_ready, args=(base, on_ready), name="ready-hook", daemon=True).start()
    uvicorn.run(
        "serving.app:app_from_settings",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        log_level="info",
        timeout_graceful_shutdown=10,
    )


def _when_ready(base: str, hook: Callable[[str], None], timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                hook(base)
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    log.warning("the API did not become ready within %.0f s", timeout)


def example_request(settings: Settings, base: str) -> tuple[str, str]:
    """A ready-to-paste curl for /predict on an active subscriber, and the API's answer to it."""
    import httpx

    from streamflow.features.materialize import active_users

    clock = httpx.get(f"{base}/ready", timeout=10).json().get("business_clock")
    users = active_users(settings, datetime.fromisoformat(clock.replace("Z", "+00:00")).date()) if clock else []
    user = users[0] if users else schemas.EXAMPLE_USER
    body = json.dumps({"user_id": user})
    command = f"curl -s -X POST {base}/predict -H 'Content-Type: application/json' -d '{body}'"
    answer = httpx.post(f"{base}/predict", content=body, headers={"Content-Type": JSON}, timeout=30)
    return command, answer.text
