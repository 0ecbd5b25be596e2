"""Operations: liveness, readiness, Prometheus metrics, and real-time usage pushes (tagged with features)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving import schemas
from serving.deps import AUTHORIZED, ServingState, State
from serving.responses import (
    JSON,
    NOT_READY,
    UNAUTHORIZED,
    VALIDATION_FAILED,
    documented,
    dumps,
    iso,
    json_response,
    unavailable,
)
from streamflow.features.online import StoreUnavailable

router = APIRouter()  # tags per route: /events is documented with the features

HEALTH_BODY = dumps({"status": "ok"})


@router.post(
    "/events",
    tags=["features"],
    summary="Push real-time usage (through the Feast PushSource)",
    response_model=schemas.EventAccepted,
    responses=documented(_401=UNAUTHORIZED, _422=VALIDATION_FAILED, _503=NOT_READY),
    dependencies=[AUTHORIZED],
)
def push_event(event: schemas.UsageEvent, state: State) -> Response:
    """The event is online at once (``usage_realtime``, shown by /features) and recorded offline. An event
    older than the one already online is recorded offline only (``online: false``)."""
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
    model = models.current
    if model is None:
        detail["model"] = models.last_error or "no model loaded yet"
    if not models.registry_ok and models.last_error:
        detail["registry"] = models.last_error
    ready = model is not None and online
    state.metrics.ready.set(1 if ready else 0)
    return ready, {
        "ready": ready,
        "model_loaded": model is not None,
        "online_store": online,
        "registry": models.registry_ok,
        "model_version": model.version if model else None,
        "business_clock": iso(clock),
        "detail": detail,
    }


@router.get(
    "/ready",
    tags=["operations"],
    summary="Model loaded and online store answering",
    response_model=schemas.Readiness,
    responses={503: {"model": schemas.Readiness, "description": "Not ready: see `detail`."}},
)
def ready(state: State) -> Response:
    """200 when a model is loaded and the online store answers with a materialized month; 503 otherwise."""
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
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
