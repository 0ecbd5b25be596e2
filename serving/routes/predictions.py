"""Predictions: the churn probability of one user (/predict) or many (/predict/batch), from one online read.

With a read token configured (STREAMFLOW_API_READ_TOKEN) a request without it or the admin token is 401, before its
body is read. The body is validated on the event loop before any I/O (413 too large, 422 invalid). A /predict whose
read can go over the online store's asynchronous connection (:meth:`streamflow.features.online.OnlineReader.read_async`:
once the registry snapshot's first read checked it) is read and scored on the event loop, the read bounded by the online
timeout; otherwise, and for /predict/batch, the read and the scoring run in the worker thread under the route's deadline
(:meth:`serving.deps.ServingState.off_loop`). Users
with missing features are 404, users with month-end features older than their TTL 409 (never scored); the rest are
scored with the serving model at its logged threshold. ``?reasons=N`` (default 3, 0 for none, at most 10) adds
each prediction's reasons: the N features that push the user's churn log-odds up the most and the N that hold it
down, from the same pass of the compiled scorer over the exact values scored (:mod:`ml.explain`). Once an answer is
built, what it served is handed to the shadow scorer (:mod:`serving.shadow`), which never makes a request wait.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field, TypeAdapter, ValidationError

from ml.explain import DEFAULT_REASONS, MAX_REASONS, top_reasons
from serving import schemas
from serving.deps import ServingState
from serving.model import ServingModel
from serving.responses import (
    BEARER,
    NOT_READY,
    READER_UNAUTHORIZED,
    VALIDATION_FAILED,
    documented,
    features_body,
    invalid,
    iso,
    json_response,
    reasons_query,
    request_body,
    stale_body,
    too_large,
    unavailable,
    unknown_body,
)
from serving.validation import TOO_LARGE, USER_IDS, BatchShape, BodyTooLarge, jsonable, read_body, validation_errors
from streamflow.features.catalog import ServiceLayout, UserRow

router = APIRouter(tags=["predictions"])

REASONS_QUERY = reasons_query(DEFAULT_REASONS, MAX_REASONS)
REASONS = TypeAdapter(Annotated[int, Field(ge=0, le=MAX_REASONS, strict=False)])


def query_errors(exc: ValidationError, name: str) -> list[dict[str, Any]]:
    """A query parameter's pydantic error as FastAPI's 422 ``detail`` items."""
    return [
        {"type": e["type"], "loc": ["query", name], "msg": e["msg"], "input": jsonable(e.get("input"))}
        for e in exc.errors(include_url=False)
    ]


def prediction(
    state: ServingState,
    model: ServingModel,
    row: UserRow,
    probability: float,
    reasons: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One user's answer: probability, decision at the model's threshold, every input with its as_of, and the
    reasons (None: not asked for, or the model has none)."""
    churn = probability >= model.threshold
    state.telemetry.predicted(probability, churn)
    return {
        "user_id": row.user_id,
        "churn_probability": probability,
        "churn": churn,
        "threshold": model.threshold,
        "model_version": model.version,
        "features_as_of": iso(row.oldest),
        "features": features_body(row, model.features),
        "reasons": reasons,
    }


def reasons_asked(request: Request) -> int | Response:
    """``?reasons=N``: how many features per direction to explain (default 3, 0 for none, at most 10), or 422."""
    raw = request.query_params.get("reasons")
    if raw is None:
        return DEFAULT_REASONS
    try:
        return REASONS.validate_python(raw)
    except ValidationError as exc:
        return invalid(query_errors(exc, "reasons"))


def scored(model: ServingModel, rows: list[UserRow], count: int) -> list[tuple[float, dict[str, Any] | None]]:
    """Each row's probability, with its reasons when ``count`` > 0 and the model explains itself: one pass of
    the scorer gives both, from the exact vector scored."""
    values = [row.values for row in rows]
    if count <= 0 or not model.explains:
        return [(float(p), None) for p in model.proba(values)]
    probabilities, margins, contributions = model.scorer.explain(values)
    features, base = model.features, model.scorer.base
    out = []
    for row, probability, margin, line in zip(rows, probabilities, margins, contributions, strict=True):
        served = [row.values.get(f) for f in features]
        body = {"base": base, "margin": float(margin), **top_reasons(line, served, features, model.labels, count)}
        out.append((float(probability), body))
    return out


def _not_served(state: ServingState, model: ServingModel, layout: ServiceLayout) -> Response | None:
    """503 when the model needs features its feature service does not serve."""
    absent = state.inputs_missing(model, layout)
    if not absent:
        return None
    return unavailable(f"model v{model.version} needs features {layout.name} does not serve: {absent}", "online")


@router.post(
    "/predict",
    summary="Churn probability of one user",
    response_model=schemas.Prediction,
    responses=documented(
        _401=READER_UNAUTHORIZED,
        _404=(schemas.UnknownUser, "Unknown user: no current online values; names the missing features."),
        _409=(schemas.StaleFeatures, "Features older than their view's TTL at the business clock: not scored."),
        _413=(schemas.ErrorBody, "Body too large."),
        _422=VALIDATION_FAILED,
        _503=NOT_READY,
    ),
    openapi_extra=request_body(schemas.PredictRequest) | BEARER | REASONS_QUERY,
)
async def predict(request: Request) -> Response:
    """Reads the user's churn_model_v1 features online (one read), refuses stale or missing ones, and scores
    them with the serving model at its logged threshold. The answer names the model version and every
    feature used with its as_of."""
    state: ServingState = request.app.state.serving
    refused = state.refuse_reader(request.headers.get("authorization"))
    if refused is not None:
        return refused
    count = reasons_asked(request)
    if isinstance(count, Response):
        return count
    try:
        user_id = schemas.PredictRequest.model_validate_json(await read_body(request)).user_id
    except BodyTooLarge:
        return too_large(TOO_LARGE)
    except ValidationError as exc:
        return invalid(validation_errors(exc))
    model = state.model_or_503()
    if isinstance(model, Response):
        return model
    # on the event loop when the read can be: no thread to hand the request to and back
    result = await state.read_user_async(user_id, state.features.model_service)
    if result is not None:
        return result if isinstance(result, Response) else _answer_one(state, model, *result, count)
    return await state.off_loop(_predict_one, state, user_id, count, doing="reading online features")


def _predict_one(state: ServingState, user_id: str, count: int) -> Response:
    """/predict after validation, in the worker thread: read, judge, score."""
    model = state.model_or_503()
    if isinstance(model, Response):
        return model
    result = state.read_user(user_id, state.features.model_service)
    if isinstance(result, Response):
        return result
    return _answer_one(state, model, *result, count)


def _answer_one(state: ServingState, model: ServingModel, row: UserRow, layout: ServiceLayout, count: int) -> Response:
    """/predict's answer for a judged row: scored, with its reasons, counted, offered to the shadow."""
    refused = _not_served(state, model, layout)
    if refused is not None:
        return refused
    ((probability, reasons),) = scored(model, [row], count)
    state.telemetry.served(row, layout.stored)
    answer = json_response(prediction(state, model, row, probability, reasons))
    if state.shadow is not None:  # the answer is built: the shadow is scored later, by its own thread
        state.shadow.offer(row, model.version, probability)
    return answer


async def _batch_ids(request: Request, limit: int) -> list[str] | Response:
    """The batch's user ids, or its 413 / 422: the shape first, then the size, then each id."""
    try:
        shape = BatchShape.model_validate_json(await read_body(request))
    except BodyTooLarge:
        return too_large(TOO_LARGE)
    except ValidationError as exc:
        return invalid(validation_errors(exc))
    if len(shape.user_ids) > limit:
        return too_large(f"{len(shape.user_ids)} user ids; the limit is {limit} per request")
    try:
        return USER_IDS.validate_python(shape.user_ids)
    except ValidationError as exc:
        return invalid(validation_errors(exc, "user_ids"))


@router.post(
    "/predict/batch",
    summary="Churn probabilities of many users (one online read)",
    response_model=schemas.BatchPrediction,
    responses=documented(
        _401=READER_UNAUTHORIZED,
        _413=(schemas.ErrorBody, "More user ids than the configured batch limit, or a body too large."),
        _422=VALIDATION_FAILED,
        _503=NOT_READY,
    ),
    openapi_extra=request_body(schemas.BatchPredictRequest) | BEARER | REASONS_QUERY,
)
async def predict_batch(request: Request) -> Response:
    """Every user is answered: predictions for users with current features, and per-user errors (404 unknown,
    409 stale) for the others. All predictions come from the same model version."""
    state: ServingState = request.app.state.serving
    refused = state.refuse_reader(request.headers.get("authorization"))
    if refused is not None:
        return refused
    count = reasons_asked(request)
    if isinstance(count, Response):
        return count
    user_ids = await _batch_ids(request, state.batch_limit)
    if isinstance(user_ids, Response):
        return user_ids
    return await state.off_loop(_predict_many, state, user_ids, count, doing="reading online features")


def _predict_many(state: ServingState, user_ids: list[str], count: int) -> Response:
    """/predict/batch after validation (in the threadpool): one read, then each user judged and scored."""
    model = state.model_or_503()
    if isinstance(model, Response):
        return model
    result = state.read(user_ids, state.features.model_service)
    if isinstance(result, Response):
        return result
    rows, catalog = result
    layout = catalog.services[state.features.model_service]
    refused = _not_served(state, model, layout)
    if refused is not None:
        return refused
    scorable, errors = [], []
    for row in rows:
        if row.verdict.missing:
            errors.append({**unknown_body(row), "status": 404})
        elif row.verdict.stale:
            body = stale_body(row, catalog.ttls, layout.features_of)
            errors.append({"user_id": row.user_id, "status": 409, "detail": body["detail"], "stale": body["stale"]})
        else:
            scorable.append(row)
    predictions, probabilities = [], []
    if scorable:
        for row, (probability, reasons) in zip(scorable, scored(model, scorable, count), strict=True):
            predictions.append(prediction(state, model, row, probability, reasons))
            probabilities.append(probability)
        state.telemetry.served(scorable[-1], layout.stored)
    answer = json_response({"model_version": model.version, "predictions": predictions, "errors": errors})
    if state.shadow is not None:  # the answer is built: the shadow is scored later, by its own thread
        for row, probability in zip(scorable, probabilities, strict=True):
            state.shadow.offer(row, model.version, probability)
    return answer
