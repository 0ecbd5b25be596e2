"""Request validation before any I/O: the body's size, its shape, the ids, and 422 bodies FastAPI's way.

The hot routes read their body themselves (no pydantic model in the signature), so a body too large is
refused (413) before it is parsed and a batch over the limit before its ids are checked.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import Request
from pydantic import BaseModel, Field, StringConstraints, TypeAdapter, ValidationError

from streamflow.drops.contract import ID_PATTERN

MAX_BODY_BYTES = 1 << 20  # larger bodies are refused with 413 before they are parsed


class BatchShape(BaseModel):
    """The batch body's shape only: the ids are checked after the size (413 before 422 per id)."""

    model_config = {"extra": "forbid"}
    user_ids: list[str] = Field(min_length=1)


USER_IDS = TypeAdapter(list[Annotated[str, StringConstraints(pattern=ID_PATTERN)]])


class BodyTooLarge(Exception):
    """The body is over MAX_BODY_BYTES (answered 413)."""


async def read_body(request: Request) -> bytes:
    """The request's body, refused once it is known to exceed MAX_BODY_BYTES."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLarge
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise BodyTooLarge
    return body


def jsonable(value: Any) -> Any:
    """An error's input or context as JSON can carry it (bytes that are not UTF-8 included)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if value is None or isinstance(value, str | int | bool) or (isinstance(value, float) and math.isfinite(value)):
        return value
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def validation_errors(exc: ValidationError, *prefix: str | int) -> list[dict[str, Any]]:
    """A pydantic error as FastAPI's 422 ``detail`` items, located in the body."""
    return [
        {
            "type": e["type"],
            "loc": ["body", *prefix, *e.get("loc", ())],
            "msg": e["msg"],
            "input": jsonable(e.get("input")),
            **({"ctx": jsonable(e["ctx"])} if "ctx" in e else {}),
        }
        for e in exc.errors(include_url=False)
    ]
