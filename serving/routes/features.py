"""Features: every online feature of one user (customer_360), each with its view, as_of and staleness. Takes the
read token when one is configured."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response

from serving import schemas
from serving.deps import READ, ServingState, State
from serving.responses import (
    NOT_READY,
    READER_UNAUTHORIZED,
    VALIDATION_FAILED,
    documented,
    features_body,
    iso,
    json_response,
)
from streamflow.drops.contract import ID_PATTERN

router = APIRouter(tags=["features"])

UserId = Annotated[
    str, Path(pattern=ID_PATTERN, description="A user id like 7590-VHVEG.", examples=[schemas.EXAMPLE_USER])
]


@router.get(
    "/features/{user_id}",
    summary="Every online feature of one user (customer_360)",
    response_model=schemas.UserFeatures,
    responses=documented(
        _401=READER_UNAUTHORIZED,
        _404=(schemas.UnknownUser, "Unknown user: names the missing features."),
        _409=(schemas.StaleFeatures, "Month-end features older than their view's TTL at the business clock."),
        _422=VALIDATION_FAILED,
        _503=NOT_READY,
    ),
    dependencies=[READ],
)
async def user_features(user_id: UserId, state: State) -> Response:
    """Values with their feature view and as_of. Pushed real-time values older than their TTL are shown
    with ``stale: true``; month-end values older than their TTL refuse the request (409)."""
    return await state.off_loop(_user_features, state, user_id, doing="reading online features")


def _user_features(state: ServingState, user_id: str) -> Response:
    service = state.features.all_service
    result = state.read_user(user_id, service)
    if isinstance(result, Response):
        return result
    row, layout = result
    state.telemetry.served(row, layout.stored)
    return json_response(
        {
            "user_id": row.user_id,
            "service": service,
            "business_clock": iso(row.clock),
            "features": features_body(row, layout.features),
        }
    )
