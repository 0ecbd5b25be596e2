"""Response helpers: pre-serialized JSON, the bodies of feature values and of every error the API answers,
and the documented responses of the OpenAPI schema.

Errors are JSON with a ``detail``: 401 no valid bearer token, 403 the read token on an admin route, 404 unknown
user, 409 stale features, 413 too large, 422 invalid, 503 a store away (with the store and ``Retry-After``).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from typing import Any

from fastapi.responses import Response
from pydantic import BaseModel

from serving import schemas
from streamflow.features.catalog import UserRow

JSON = "application/json"

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


INTERNAL_ERROR = dumps({"detail": "internal error"})


# ---------------------------------------------------------------------------------------
# feature values and the errors about them
# ---------------------------------------------------------------------------------------
def features_body(row: UserRow, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each feature's value with its view, as_of and whether it is stale (a flagged pushed value)."""
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


def unknown_body(row: UserRow) -> dict[str, Any]:
    """404: the user has no online values, or lacks some (named)."""
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


def stale_body(row: UserRow, ttls, features_of) -> dict[str, Any]:
    """409: month-end values older than their view's TTL at the business clock, with their as_of."""
    return {
        "detail": f"features of user {row.user_id} are older than their TTL at the business clock "
        f"{row.clock.date().isoformat()}: refused, not scored",
        "user_id": row.user_id,
        "business_clock": iso(row.clock),
        "stale": _stale_views(row, ttls, features_of),
    }


def unavailable(detail: str, store: str) -> Response:
    """503: a store did not answer (or holds nothing yet); the client may retry shortly."""
    return json_response({"detail": detail, "store": store}, 503, headers={"Retry-After": "5"})


def invalid(errors: list[dict[str, Any]]) -> Response:
    return json_response({"detail": errors}, 422)


CHALLENGE = {"WWW-Authenticate": "Bearer"}
FORBIDDEN = "the read token does not grant this route: it needs the admin token (STREAMFLOW_API_TOKEN)"


def token_needed(access: str) -> str:
    """401's detail: which token the route takes (``access``: "admin" or "read")."""
    if access == "admin":
        return "a valid bearer token is required: this route takes the admin token (STREAMFLOW_API_TOKEN)"
    return (
        "a valid bearer token is required: this route takes the read token (STREAMFLOW_API_READ_TOKEN) "
        "or the admin token (STREAMFLOW_API_TOKEN)"
    )


def unauthorized(access: str) -> Response:
    return json_response({"detail": token_needed(access)}, 401, headers=CHALLENGE)


def too_large(detail: str) -> Response:
    return json_response({"detail": detail}, 413)


# ---------------------------------------------------------------------------------------
# the documented responses (OpenAPI)
# ---------------------------------------------------------------------------------------
def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a body a route reads itself (validated before any I/O)."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {JSON: {"schema": schema}}}}


def documented(**codes: tuple[type[BaseModel], str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route from ``_404=(model, description)`` pairs."""
    return {int(code.lstrip("_")): {"model": model, "description": text} for code, (model, text) in codes.items()}


VALIDATION_FAILED = (schemas.ErrorBody, "Invalid body or id format.")
NOT_READY = (schemas.Unavailable, "Online store or model registry unreachable, or no model loaded yet.")
UNAUTHORIZED = (schemas.ErrorBody, "Missing or wrong bearer token: this route takes the admin token.")
READ_ONLY_TOKEN = (schemas.ErrorBody, "The read token: this route takes the admin token.")
READER_UNAUTHORIZED = (
    schemas.ErrorBody,
    "Missing or wrong bearer token, when a read token (STREAMFLOW_API_READ_TOKEN) is configured.",
)
BEARER = {"security": [{"HTTPBearer": []}]}


def reasons_query(default: int, most: int) -> dict[str, Any]:
    """``openapi_extra`` documenting ``?reasons=N``, a query parameter the prediction routes read themselves."""
    return {
        "parameters": [
            {
                "name": "reasons",
                "in": "query",
                "required": False,
                "description": f"Features per direction in `reasons` (pushing the risk up, holding it down): "
                f"0 for none, at most {most}.",
                "schema": {"type": "integer", "minimum": 0, "maximum": most, "default": default},
            }
        ]
    }  # ``openapi_extra`` of a route that checks the token itself
