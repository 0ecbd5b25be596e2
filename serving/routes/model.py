"""The model: what answers predictions now (open), and checking the registry alias at once (admin token)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from serving import schemas
from serving.deps import ADMIN, State
from serving.model import ServingModel
from serving.responses import NOT_READY, READ_ONLY_TOKEN, UNAUTHORIZED, documented, iso, json_response

router = APIRouter(tags=["model"])


def model_body(model: ServingModel, shadow: ServingModel | None = None) -> dict[str, Any]:
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
        "shadow": shadow_body(shadow) if shadow is not None else None,
    }


def shadow_body(shadow: ServingModel) -> dict[str, Any]:
    return {
        "version": shadow.version,
        "alias": shadow.alias,
        "run_id": shadow.run_id,
        "trained_as_of": shadow.trained_as_of.isoformat() if shadow.trained_as_of else None,
        "registered_at": iso(shadow.created),
        "scorer": shadow.scorer.kind,
    }


@router.get(
    "/model",
    summary="The serving model",
    response_model=schemas.ModelInfo,
    responses=documented(_503=NOT_READY),
)
async def model_info(state: State) -> Response:
    """Version, alias, validation metrics, decision threshold, trained as_of and inputs of the model answering
    predictions now, and the shadow scored next to it off the request path (``shadow``)."""
    model = state.model_or_503()
    if isinstance(model, Response):
        return model
    return json_response(model_body(model, state.shadow.model if state.shadow is not None else None))


@router.post(
    "/admin/model/reload",
    summary="Check the registry alias now",
    response_model=schemas.ModelReload,
    responses=documented(_401=UNAUTHORIZED, _403=READ_ONLY_TOKEN),
    dependencies=[ADMIN],
)
def reload_model(state: State) -> Response:
    """Polls the registry at once instead of waiting for the next poll (STREAMFLOW_MODEL_POLL_SECONDS)."""
    models = state.models
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
