"""The app's shared state and the dependencies routes declare.

:class:`ServingState` holds what every route needs (settings, the online reader, the model holder, metrics)
and lives on ``app.state.serving``; routes get it with :data:`State` (or from their ``Request`` on the hot
paths, which read their body themselves).

Two bearer tokens (:class:`Tokens`, resolved once by :func:`api_tokens`): the admin token (STREAMFLOW_API_TOKEN,
always there: generated on the embedded stack, a start-up error elsewhere when unset) guards the routes that change
state (:data:`ADMIN`: /events, /admin/*) and grants every other route too; the optional read token
(STREAMFLOW_API_READ_TOKEN) guards the subscriber-data routes (:data:`READ`, or :meth:`ServingState.refuse_reader`
on the hot paths: /predict, /predict/batch, /features). /health, /ready, /model, /metrics and the docs stay open.

The event loop never waits for a store: routes run their blocking work (online reads, pushes, scoring,
readiness checks) through :meth:`ServingState.off_loop`, in the threadpool and under a deadline, so a slow or
unreachable store makes those requests answer 503 while /health and everything else keeps answering.
"""

from __future__ import annotations

import contextlib
import hmac
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Request
from fastapi.responses import Response
from fastapi.security import HTTPBearer

from serving.metrics import ApiMetrics
from serving.model import ModelHolder, ServingModel
from serving.responses import (
    CHALLENGE,
    FORBIDDEN,
    json_response,
    stale_body,
    token_needed,
    unauthorized,
    unavailable,
    unknown_body,
)
from serving.shadow import ShadowScorer
from serving.telemetry import REGISTRY, Telemetry
from streamflow.core.errors import StreamflowError
from streamflow.core.runlog import OpsState
from streamflow.core.settings import Settings
from streamflow.core.stack import api_token_file, embedded_api_token
from streamflow.features.catalog import Catalog, ServiceLayout, UserRow
from streamflow.features.online import ONLINE, OnlineReader, StoreUnavailable

DEADLINE_SLACK_SECONDS = 0.5  # a route's deadline: the store's own timeout, plus this
WORK_THREADS = 1  # threads a process runs its routes' blocking work in, one request after the other: reads share the
# store's one connection and scoring holds the interpreter, so more threads would only take turns (and each turn costs)

ADMIN_ACCESS, READ_ACCESS = "admin", "read"  # what a bearer token grants


class ApiTokenError(StreamflowError):
    """The API's tokens are not configured in a way it may start with."""


@dataclass(frozen=True)
class Tokens:
    """The API's bearer tokens: the admin one (always) and the optional read one."""

    admin: bytes
    read: bytes | None = None

    def access(self, authorization: str | None) -> str | None:
        """What an ``Authorization`` header grants: ``"admin"``, ``"read"`` or None (absent, not a bearer token,
        or wrong). Both tokens are always compared, in constant time."""
        scheme, _, given = (authorization or "").partition(" ")
        credential = given.strip().encode() if scheme.lower() == "bearer" else b""
        is_admin = hmac.compare_digest(credential, self.admin)
        is_read = self.read is not None and hmac.compare_digest(credential, self.read)
        if not credential:
            return None
        return ADMIN_ACCESS if is_admin else READ_ACCESS if is_read else None


def api_tokens(settings: Settings) -> Tokens:
    """The tokens the API starts with. The admin token is STREAMFLOW_API_TOKEN; unset (or empty), the embedded
    stack generates one once under ``home``/secrets and an external database (STREAMFLOW_DATABASE_URL) is an
    :class:`ApiTokenError`: the API never starts open. The read token must differ from the admin token."""
    admin = settings.api_token.get_secret_value() if settings.api_token else ""
    if not admin:
        if not settings.embedded:
            raise ApiTokenError(
                "STREAMFLOW_API_TOKEN is not set: the API needs an admin token when it runs on an external database "
                "(STREAMFLOW_DATABASE_URL)",
                hint="set STREAMFLOW_API_TOKEN to a long random value: "
                "export STREAMFLOW_API_TOKEN=\"$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')\"",
            )
        admin = embedded_api_token(settings)
        if not admin:
            raise ApiTokenError(
                f"{api_token_file(settings)} is empty",
                hint=f"delete {api_token_file(settings)} to have a new admin token generated",
            )
    read = settings.api_read_token.get_secret_value() if settings.api_read_token else ""
    if read and hmac.compare_digest(read.encode(), admin.encode()):
        raise ApiTokenError(
            "STREAMFLOW_API_READ_TOKEN equals the admin token (STREAMFLOW_API_TOKEN): a reader would hold admin rights",
            hint="give STREAMFLOW_API_READ_TOKEN a value of its own",
        )
    return Tokens(admin.encode(), read.encode() if read else None)


@dataclass
class ServingState:
    """The collaborators of one app and what is derived from them once."""

    settings: Settings
    features: OnlineReader
    models: ModelHolder
    metrics: ApiMetrics
    telemetry: Telemetry
    read_ops: Callable[[], OpsState]
    shadow: ShadowScorer | None = None  # the shadow model scored off the request path (None: STREAMFLOW_SHADOW=off)
    tokens: Tokens = field(init=False)
    # (model, version, service layout) -> inputs the service does not serve
    _missing_inputs: dict[tuple, list[str]] = field(default_factory=dict, init=False, repr=False)
    _threads: anyio.CapacityLimiter | None = field(default=None, init=False, repr=False)
    in_flight: int = field(default=0, init=False)  # requests in progress, answers not sent yet (event loop only)
    idle: threading.Event = field(default_factory=threading.Event, init=False)  # set while in_flight is 0

    def __post_init__(self) -> None:
        self.tokens = api_tokens(self.settings)
        self.idle.set()

    def _limiter(self) -> anyio.CapacityLimiter:
        limiter = self._threads
        if limiter is None:  # made in the event loop, on first use
            limiter = self._threads = anyio.CapacityLimiter(WORK_THREADS)
        return limiter

    def refuse_reader(self, authorization: str | None) -> Response | None:
        """401 for a read route when a read token is configured and ``authorization`` grants neither token;
        None when the request may go on (the hot paths call this instead of a dependency)."""
        if self.tokens.read is None or self.tokens.access(authorization) is not None:
            return None
        return unauthorized(READ_ACCESS)

    @property
    def batch_limit(self) -> int:
        return self.settings.batch_limit

    @property
    def deadline(self) -> float:
        """Seconds a route waits for its blocking work before answering 503."""
        return self.settings.online_timeout_seconds + DEADLINE_SLACK_SECONDS

    async def off_loop(
        self,
        work: Callable[..., Response],
        *args,
        doing: str,
        store: str = ONLINE,
        late: Callable[[ServingState], Response] | None = None,
    ) -> Response:
        """``work(*args)`` in the worker thread (WORK_THREADS, requests in turn), its answer, or once
        :attr:`deadline` passes a 503 (``late(self)`` when given). The thread is left to finish: every store call it
        makes has a timeout of its own."""
        try:
            with anyio.fail_after(self.deadline):
                return await anyio.to_thread.run_sync(
                    partial(work, *args), abandon_on_cancel=True, limiter=self._limiter()
                )
        except TimeoutError:
            self.telemetry.store_error(store)
            if late is not None:
                return late(self)
            return unavailable(f"no answer within {self.deadline:g} s while {doing}; retry shortly", store)

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """A request in progress, from its start until its answer is sent (the metrics middleware enters this for
        every request): :attr:`idle` is clear until none is, and the shadow scores only then."""
        self.in_flight += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()

    def model_or_503(self) -> ServingModel | Response:
        """The model to answer with, or the 503 saying why there is none."""
        model = self.models.current
        if model is None:
            return unavailable(f"no model loaded yet ({self.models.why_none()})", REGISTRY)
        return model

    def read(self, user_ids: list[str], service: str) -> tuple[list[UserRow], Catalog] | Response:
        """One online read, or the 503 of the store that did not answer."""
        try:
            return self.features.read(user_ids, service)
        except StoreUnavailable as exc:
            return unavailable(str(exc), exc.store)

    def read_user(self, user_id: str, service: str) -> tuple[UserRow, ServiceLayout] | Response:
        """One user's judged row of ``service`` and the service's layout, or the answer that refuses it:
        404 naming the missing features, 409 naming the stale views, 503 when the store is down."""
        return self._judged(self.read([user_id], service), service)

    async def read_user_async(self, user_id: str, service: str) -> tuple[UserRow, ServiceLayout] | Response | None:
        """:meth:`read_user` on the event loop (:meth:`OnlineReader.read_async`), or None when this read must go
        through :meth:`read_user` in the worker thread."""
        try:
            result = await self.features.read_async([user_id], service)
        except StoreUnavailable as exc:
            return unavailable(str(exc), exc.store)
        return None if result is None else self._judged(result, service)

    @staticmethod
    def _judged(
        result: tuple[list[UserRow], Catalog] | Response, service: str
    ) -> tuple[UserRow, ServiceLayout] | Response:
        if isinstance(result, Response):
            return result
        (row,), catalog = result
        layout = catalog.services[service]
        if row.verdict.missing:
            return json_response(unknown_body(row), 404)
        if row.verdict.stale:
            return json_response(stale_body(row, catalog.ttls, layout.features_of), 409)
        return row, layout

    def refusal(self, model: ServingModel) -> str | None:
        """Why ``model`` must not replace the serving one: the inputs the model's feature service does not serve
        (None when it serves them all, or when no registry snapshot is there to tell)."""
        try:
            catalog = self.features.catalog()
        except StoreUnavailable:
            return None
        layout = catalog.services.get(self.features.model_service)
        if layout is None:
            return None
        absent = self.inputs_missing(model, layout)
        return f"needs features {layout.name} does not serve: {absent}" if absent else None

    def inputs_missing(self, model: ServingModel, layout: ServiceLayout) -> list[str]:
        """The model's inputs the service does not serve (computed once per model version and layout)."""
        key = (model.name, model.version, layout.pairs)
        absent = self._missing_inputs.get(key)
        if absent is None:
            served = set(layout.features)
            absent = self._missing_inputs[key] = [f for f in model.features if f not in served]
        return absent


async def get_state(request: Request) -> ServingState:
    """The app's state (async: resolved on the event loop, not in a worker thread)."""
    return request.app.state.serving


State = Annotated[ServingState, Depends(get_state)]

bearer = HTTPBearer(
    auto_error=False,
    description="STREAMFLOW_API_TOKEN (admin: every route) or STREAMFLOW_API_READ_TOKEN (read: /predict, "
    "/predict/batch, /features).",
)


async def require_admin(state: State, request: Request, _scheme=Depends(bearer)) -> None:
    """/events and /admin/*: 401 without the admin token, 403 with the read token."""
    access = state.tokens.access(request.headers.get("authorization"))
    if access == ADMIN_ACCESS:
        return
    if access == READ_ACCESS:
        raise HTTPException(403, FORBIDDEN)
    raise HTTPException(401, token_needed(ADMIN_ACCESS), headers=CHALLENGE)


async def require_reader(state: State, request: Request, _scheme=Depends(bearer)) -> None:
    """/features: 401 without the read or the admin token, when a read token is configured."""
    if state.tokens.read is not None and state.tokens.access(request.headers.get("authorization")) is None:
        raise HTTPException(401, token_needed(READ_ACCESS), headers=CHALLENGE)


ADMIN = Depends(require_admin)
READ = Depends(require_reader)
