"""The app's shared state and the dependencies routes declare.

:class:`ServingState` holds what every route needs (settings, the online reader, the model holder, metrics)
and lives on ``app.state.serving``; routes get it with :data:`State` (or from their ``Request`` on the hot
paths, which read their body themselves). :data:`AUTHORIZED` guards the routes that change state.

The event loop never waits for a store: routes run their blocking work (online reads, pushes, scoring,
readiness checks) through :meth:`ServingState.off_loop`, in the threadpool and under a deadline, so a slow or
unreachable store makes those requests answer 503 while /health and everything else keeps answering.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.metrics import ApiMetrics
from serving.model import ModelHolder, ServingModel
from serving.responses import json_response, stale_body, unavailable, unknown_body
from serving.telemetry import REGISTRY, Telemetry
from streamflow.core.runlog import OpsState
from streamflow.core.settings import Settings
from streamflow.features.catalog import Catalog, ServiceLayout, UserRow
from streamflow.features.online import ONLINE, OnlineReader, StoreUnavailable

DEADLINE_SLACK_SECONDS = 0.5  # a route's deadline: the store's own timeout, plus this


@dataclass
class ServingState:
    """The collaborators of one app and what is derived from them once."""

    settings: Settings
    features: OnlineReader
    models: ModelHolder
    metrics: ApiMetrics
    telemetry: Telemetry
    read_ops: Callable[[], OpsState]
    token: bytes | None = field(init=False)
    # (model, version, service layout) -> inputs the service does not serve
    _missing_inputs: dict[tuple, list[str]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        api_token = self.settings.api_token
        self.token = api_token.get_secret_value().encode() if api_token else None

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
        """``work(*args)`` in the threadpool, its answer, or once :attr:`deadline` passes a 503 (``late(self)`` when
        given). The thread is left to finish: every store call it makes has a timeout of its own."""
        try:
            with anyio.fail_after(self.deadline):
                return await anyio.to_thread.run_sync(partial(work, *args), abandon_on_cancel=True)
        except TimeoutError:
            self.telemetry.store_error(store)
            if late is not None:
                return late(self)
            return unavailable(f"no answer within {self.deadline:g} s while {doing}; retry shortly", store)

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
        result = self.read([user_id], service)
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

bearer = HTTPBearer(auto_error=False, description="The token in STREAMFLOW_API_TOKEN (only checked when set).")


async def require_token(
    state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """401 unless the bearer token matches STREAMFLOW_API_TOKEN (no check when it is not set)."""
    if state.token is None:
        return
    given = credentials.credentials.encode() if credentials is not None else b""
    if not hmac.compare_digest(given, state.token):
        raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})


AUTHORIZED = Depends(require_token)
