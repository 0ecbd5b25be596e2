"""Request validation before any I/O: the body's size, its shape, the ids, and 422 bodies FastAPI's way.

The hot routes read their body themselves (no pydantic model in the signature), so a body too large is
refused (413) before it is parsed and a batch over the limit before its ids are checked. Every other route
is guarded by :class:`BodyLimit`: a body is counted while it streams in (chunked bodies too) and refused
with 413 as soon as it passes MAX_BODY_BYTES, never read whole into memory.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import HTTPException, Request
from pydantic import BaseModel, Field, StringConstraints, TypeAdapter, ValidationError

from streamflow.drops.contract import ID_PATTERN

MAX_BODY_BYTES = 1 << 20  # larger bodies are refused with 413 before they are parsed


class BatchShape(BaseModel):
    """The batch body's shape only: the ids are checked after the size (413 before 422 per id)."""

    model_config = {"extra": "forbid"}
    user_ids: list[str] = Field(min_length=1)


USER_IDS = TypeAdapter(list[Annotated[str, StringConstraints(pattern=ID_PATTERN)]])


TOO_LARGE = f"body larger than {MAX_BODY_BYTES} bytes"


class BodyTooLarge(HTTPException):
    """The body is over MAX_BODY_BYTES (answered 413). An HTTPException, so that FastAPI answers it as such when
    it surfaces while FastAPI itself reads a body (routes with a pydantic body)."""

    def __init__(self) -> None:
        super().__init__(413, TOO_LARGE)


def _declared_too_large(headers) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return value.isdigit() and int(value) > MAX_BODY_BYTES
    return False


async def read_body(request: Request) -> bytes:
    """The request's body, read as it streams in and refused as soon as it exceeds MAX_BODY_BYTES (a declared
    Content-Length over the limit at once; a chunked body when its running size passes it)."""
    if _declared_too_large(request.scope["headers"]):
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class BodyLimit:
    """Pure ASGI: refuses request bodies over MAX_BODY_BYTES with 413 while they stream in, for every route.

    A declared Content-Length over the limit is answered before the app runs; otherwise the body's running size
    is counted as the app receives it, and the receive that passes the limit raises :class:`BodyTooLarge`, which
    is answered 413 here unless the app answered it already. The rest of the body is never read."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_too_large(scope["headers"]):
            await _refuse(send)
            return
        size = 0
        started = False

        async def counted():
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.limit:
                    raise BodyTooLarge
            return message

        async def tracked(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if started:
                raise
            await _refuse(send)


async def _refuse(send) -> None:
    body = b'{"detail":"' + TOO_LARGE.encode() + b'"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))  # the rest of the body is not read: this connection is done
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
