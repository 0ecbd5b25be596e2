"""Operations: liveness, readiness, Prometheus metrics (open), and real-time usage pushes (admin token; tagged
with features).

/health never waits for anything; /ready and /events do their store work in the threadpool under the route's
deadline (:meth:`serving.deps.ServingState.off_loop`), so a stalled store never stalls the event loop.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving import schemas
from serving.deps import ADMIN, ServingState, State
from serving.responses import (
    JSON,
    NOT_READY,
    READ_ONLY_TOKEN,
    UNAUTHORIZED,
    VALIDATION_FAILED,
    documented,
    dumps,
    invalid,
    iso,
    json_response,
    unavailable,
)
from streamflow.features.freshness import latest_push_time
from streamflow.features.online import StoreUnavailable

router = APIRouter()  # tags per route: /events is documented with the features

HEALTH_BODY = dumps({"status": "ok"})


@router.post(
    "/events",
    tags=["features"],
    summary="Push real-time usage (through the Feast PushSource)",
    response_model=schemas.EventAccepted,
    responses=documented(_401=UNAUTHORIZED, _403=READ_ONLY_TOKEN, _422=VALIDATION_FAILED, _503=NOT_READY),
    dependencies=[ADMIN],
)
async def push_event(event: schemas.UsageEvent, state: State) -> Response:
    """The event is online at once (``usage_realtime``, shown by /features) and recorded offline. An event
    older than the one already online is recorded offline only (``online: false``). An event time beyond the
    business clock (after the month following the newest materialized month, plus the pushed view's TTL) is 422."""
    field = "event_time" if event.event_time is not None else "last_session_at"
    refused = _beyond_clock(state, event.event_time or event.last_session_at, field)
    if refused is not None:
        return refused
    return await state.off_loop(_push, state, event, doing="pushing a usage event")


def _beyond_clock(state: ServingState, when: datetime, field: str) -> Response | None:
    """422 for an event time past :func:`latest_push_time` at the business clock (None: accepted, or no clock)."""
    try:
        catalog = state.features.catalog()
    except StoreUnavailable:
        return None  # no registry snapshot yet: the push itself answers 503
    if catalog.clock is None:
        return None
    ttl = max((catalog.ttls.get(v) for v in catalog.pushed if catalog.ttls.get(v)), default=None)
    latest = latest_push_time(catalog.clock, ttl)
    if when <= latest:
        return None
    message = (
        f"event time {iso(when.astimezone(UTC))} is beyond the business clock {iso(catalog.clock)}: events may "
        f"carry business times up to {iso(latest)} (the end of the month after the clock, plus the pushed "
        "view's TTL); send the event's own business time"
    )
    return invalid([{"type": "value_error", "loc": ["body", field], "msg": message, "input": iso(when)}])


def _push(state: ServingState, event: schemas.UsageEvent) -> Response:
    try:
        outcome = state.features.push(
            event.user_id,
            watch_minutes_today=event.watch_minutes_today,
            last_session_at=event.last_session_at,
            event_time=event.event_time,
        )
    except StoreUnavailable as exc:
        return unavailable(str(exc), exc.store)
    return json_response(
        {
            "user_id": outcome.user_id,
            "accepted": True,
            "online": outcome.online,
            "event_time": iso(outcome.event_time.astimezone(UTC)),
        }
    )


@router.get("/health", tags=["operations"], summary="The process is up", response_model=schemas.Health)
async def health() -> Response:
    return Response(HEALTH_BODY, media_type=JSON)


def readiness(state: ServingState) -> tuple[bool, dict[str, Any]]:
    """Ready when a model is loaded and the online store answers with a materialized month; why not otherwise."""
    features, models = state.features, state.models
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
    ready = models.current is not None and online
    state.metrics.ready.set(1 if ready else 0)
    return ready, _readiness_body(state, online, clock, detail)


def _readiness_body(state: ServingState, online: bool, clock, detail: dict[str, str]) -> dict[str, Any]:
    models = state.models
    model = models.current
    shadow = state.shadow.model if state.shadow is not None else None
    failure = models.load_failure
    if model is None:
        detail["model"] = models.why_none()
    elif failure is not None:
        alias, version = models.source.alias, failure.version
        detail["model"] = f"{alias} v{version} was not loaded ({failure.reason}); v{model.version} keeps serving"
    if not models.registry_ok and models.last_error:
        detail["registry"] = models.last_error
    return {
        "ready": model is not None and online,
        "model_loaded": model is not None,
        "online_store": online,
        "registry": models.registry_ok,
        "model_version": model.version if model else None,
        "shadow_version": shadow.version if shadow is not None else None,
        "business_clock": iso(clock),
        "model_load_failure": failure.as_dict() if failure is not None else None,
        "detail": detail,
    }


@router.get(
    "/ready",
    tags=["operations"],
    summary="Model loaded and online store answering",
    response_model=schemas.Readiness,
    responses={503: {"model": schemas.Readiness, "description": "Not ready: see `detail`."}},
)
async def ready(state: State) -> Response:
    """200 when a model is loaded and the online store answers with a materialized month; 503 otherwise. A
    champion that failed to load (or was refused) is named in ``model_load_failure``; the model before it keeps
    serving."""
    return await state.off_loop(_ready, state, doing="checking the online store", late=_stalled)


def _stalled(state: ServingState) -> Response:
    """/ready when the store did not answer within the deadline."""
    state.metrics.ready.set(0)
    detail = {"online_store": f"the online store did not answer within {state.deadline:g} s"}
    return json_response(_readiness_body(state, False, None, detail), 503)


def _ready(state: ServingState) -> Response:
    ok, body = readiness(state)
    return json_response(body, 200 if ok else 503)


@router.get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics",
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition."}},
)
def prometheus(state: State) -> Response:
    state.telemetry.refresh_ops(state.read_ops)
    state.metrics.ready.set(1 if state.models.current is not None and state.features.online_ok else 0)
    if state.shadow is not None:
        state.shadow.export()
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
