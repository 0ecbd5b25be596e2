"""The API's HTTP contract over loopback, with local collaborators (online rows in memory, models fitted here):
status codes, error bodies, validation before any read, auth, and no 500 with internals.

The same behaviour on the real PostgreSQL online store, Feast and the MLflow registry is in
tests/integration/test_api.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from serving.app import create_app
from serving.model import ModelHolder
from streamflow.core.runlog import OpsState
from streamflow.core.settings import Settings
from tests.serving_support import (
    CLOCK,
    MODEL_FEATURES,
    LocalModels,
    MemoryFeatures,
    serve_in_thread,
    serving_model,
    user_values,
)

TOKEN = "unit-test-token"
KNOWN, OTHER, STALE, UNKNOWN = "1111-AAAAA", "2222-BBBBB", "3333-CCCCC", "9999-ZZZZZ"
JAN = datetime(2024, 1, 31, tzinfo=UTC)


def ops_state() -> OpsState:
    return OpsState({"streamflow_monthly": ("success", datetime(2024, 4, 1, 6, tzinfo=UTC))}, 0.1, False)


@pytest.fixture(scope="module")
def world():
    features = MemoryFeatures()
    features.add(KNOWN, user_values(0))
    features.add(OTHER, user_values(1))
    features.add(STALE, user_values(2), as_of=JAN)
    registry = LocalModels({"1": serving_model("1", threshold=0.5)}, alias="1")
    models = ModelHolder(registry, poll_seconds=3600)
    settings = Settings(_env_file=None, api_token=TOKEN, batch_limit=5)
    app = create_app(settings, features, models, ops_state=ops_state)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, features, registry, models, app


@pytest.fixture()
def api(world):
    client, features, registry, models, _app = world
    features.reads, features.down, features.broken = 0, False, None
    yield client
    features.down, features.broken, registry.fail = False, None, False


def test_a_known_user_is_scored_with_the_model_version_threshold_and_every_input_dated(world, api):
    _c, _f, _r, models, _a = world
    r = api.post("/predict", json={"user_id": KNOWN})
    assert r.status_code == 200, r.text
    body = r.json()
    model = models.current
    expected = float(model.proba([user_values(0)])[0])
    assert body["churn_probability"] == pytest.approx(expected, abs=1e-12)
    assert body["churn"] == (expected >= 0.5) and body["threshold"] == 0.5 and body["model_version"] == "1"
    assert list(body["features"]) == MODEL_FEATURES
    assert body["features"]["monthly_fee"] == {
        "value": 70.5,
        "feature_view": "profile",
        "as_of": "2024-03-31T00:00:00Z",
        "stale": False,
    }
    assert body["features_as_of"] == "2024-03-31T00:00:00Z"


def test_an_unknown_user_is_404_naming_every_missing_feature(api):
    r = api.post("/predict", json={"user_id": UNKNOWN})
    assert r.status_code == 404
    body = r.json()
    assert body["user_id"] == UNKNOWN and set(body["missing_features"]) == set(MODEL_FEATURES)
    assert "2024-03-31" in body["detail"]


def test_a_user_with_stale_features_is_refused_with_409_and_their_as_of_and_never_scored(world, api):
    _c, _f, _r, _m, app = world
    scored = app.state.metrics.probability._sum.get()
    r = api.post("/predict", json={"user_id": STALE})
    assert r.status_code == 409
    body = r.json()
    assert body["business_clock"] == "2024-03-31T00:00:00Z"
    assert {v["feature_view"]: v["as_of"] for v in body["stale"]} == {
        "profile": "2024-01-31T00:00:00Z",
        "usage": "2024-01-31T00:00:00Z",
    }
    assert body["stale"][0]["age_seconds"] == 60 * 86400 and body["stale"][0]["ttl_seconds"] == 35 * 86400
    assert app.state.metrics.probability._sum.get() == scored


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/predict", b"not json"),
        ("/predict", b"{}"),
        ("/predict", b'{"user_id": 7590}'),
        ("/predict", b'{"user_id": "7590-vhveg"}'),
        ("/predict", b'{"user_id": "7590-VHVEG", "extra": 1}'),
        ("/predict/batch", b'{"user_ids": []}'),
        ("/predict/batch", b'{"user_ids": ["1111-AAAAA", "oops"]}'),
        ("/predict/batch", b'{"user_ids": "1111-AAAAA"}'),
        ("/predict", b"\xff\xfeGC\x04gKj"),  # not UTF-8
        ("/predict/batch", b'{"user_ids": ["\xff\xfe"]}'),
    ],
)
def test_an_invalid_body_or_id_is_422_before_any_read(world, api, path, content):
    _c, features, *_ = world
    r = api.post(path, content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert isinstance(r.json()["detail"], list) and r.json()["detail"][0]["loc"][0] == "body"
    assert features.reads == 0


def test_an_invalid_id_in_the_path_is_422_before_any_read(world, api):
    _c, features, *_ = world
    assert api.get("/features/not-an-id").status_code == 422
    assert features.reads == 0


def test_a_batch_over_the_limit_is_413_before_any_read(world, api):
    _c, features, *_ = world
    r = api.post("/predict/batch", json={"user_ids": [KNOWN] * 6})
    assert r.status_code == 413 and "limit is 5" in r.json()["detail"]
    big = api.post("/predict", content=b'{"user_id": "' + b"x" * (2 << 20) + b'"}')
    assert big.status_code == 413
    assert features.reads == 0


def test_a_batch_answers_every_user_from_one_read(world, api):
    _c, features, *_ = world
    r = api.post("/predict/batch", json={"user_ids": [KNOWN, UNKNOWN, STALE, OTHER, KNOWN]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert features.reads == 1
    assert [p["user_id"] for p in body["predictions"]] == [KNOWN, OTHER, KNOWN]
    assert {(e["user_id"], e["status"]) for e in body["errors"]} == {(UNKNOWN, 404), (STALE, 409)}
    single = api.post("/predict", json={"user_id": OTHER}).json()
    assert body["predictions"][1]["churn_probability"] == pytest.approx(single["churn_probability"], abs=1e-12)


def test_an_unreachable_store_is_503_and_not_ready_and_the_next_request_after_it_returns_succeeds(world, api):
    _c, features, *_ = world
    features.down = True
    r = api.post("/predict", json={"user_id": KNOWN})
    assert r.status_code == 503 and r.json()["store"] == "online" and r.headers["retry-after"]
    ready = api.get("/ready")
    assert ready.status_code == 503 and ready.json()["online_store"] is False
    assert api.post("/predict", content=b"{}").status_code == 422  # validation still answers first
    features.down = False
    assert api.post("/predict", json={"user_id": KNOWN}).status_code == 200
    assert api.get("/ready").json()["ready"] is True


def test_without_a_model_predictions_and_model_info_are_503_and_the_service_is_not_ready():
    features = MemoryFeatures()
    features.add(KNOWN, user_values(0))
    registry = LocalModels({}, alias=None)
    settings = Settings(_env_file=None, api_token=TOKEN)
    app = create_app(settings, features, ModelHolder(registry, poll_seconds=3600), ops_state=ops_state)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health").json() == {"status": "ok"}
        r = client.post("/predict", json={"user_id": KNOWN})
        assert r.status_code == 503 and r.json()["store"] == "registry" and "no champion" in r.json()["detail"]
        assert client.get("/model").status_code == 503
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["model_loaded"] is False


def test_an_unexpected_error_is_a_bare_json_500_without_internals(world, api):
    _c, features, _r, _m, app = world
    features.broken = RuntimeError("secret detail in /srv/app/serving/features.py line 12")
    r = api.post("/predict", json={"user_id": KNOWN})
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error"}
    assert "secret" not in r.text and "Traceback" not in r.text
    assert api.get("/health").status_code == 200  # the connection stays usable after the error
    counted = app.state.metrics.requests.labels(route="/predict", method="POST", status="500")._value.get()
    assert counted >= 1


def test_events_and_admin_routes_require_the_bearer_token(api):
    event = {"user_id": KNOWN, "watch_minutes_today": 30.0, "last_session_at": "2024-04-02T20:00:00Z"}
    for path, body in (("/events", event), ("/admin/model/reload", None)):
        missing = api.post(path, json=body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = api.post(path, json=body, headers={"Authorization": f"Bearer {TOKEN}x"})
        assert wrong.status_code == 401
        basic = api.post(path, json=body, headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code == 401
        lower = api.post(path, json=body, headers={"Authorization": f"bearer {TOKEN}"})  # the scheme is caseless
        assert lower.status_code == 200, lower.text
        right = api.post(path, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200, right.text
    assert api.get("/features/" + KNOWN).json()["features"]["watch_minutes_today"]["value"] == 30.0


def test_an_event_without_time_zone_or_out_of_range_is_422(api):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    naive = {"user_id": KNOWN, "watch_minutes_today": 3, "last_session_at": "2024-04-02T20:00:00"}
    assert api.post("/events", json=naive, headers=headers).status_code == 422
    too_long = {"user_id": KNOWN, "watch_minutes_today": 1441, "last_session_at": "2024-04-02T20:00:00Z"}
    assert api.post("/events", json=too_long, headers=headers).status_code == 422
    for when in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59+14:00"):  # beyond what the stores can date
        far = {"user_id": KNOWN, "watch_minutes_today": 3, "last_session_at": when}
        assert api.post("/events", json=far, headers=headers).status_code == 422


def test_a_pushed_value_older_than_a_day_at_the_clock_is_shown_flagged_stale(world, api):
    _c, features, *_ = world
    features.rows[OTHER]["realtime"] = (CLOCK - timedelta(days=3), {"watch_minutes_today": 12.0})
    body = api.get(f"/features/{OTHER}").json()
    assert body["features"]["watch_minutes_today"] == {
        "value": 12.0,
        "feature_view": "realtime",
        "as_of": "2024-03-28T00:00:00Z",
        "stale": True,
    }
    assert body["features"]["monthly_fee"]["stale"] is False
    # the model's inputs never include pushed values: the prediction is unaffected
    assert api.post("/predict", json={"user_id": OTHER}).status_code == 200


def test_every_documented_response_body_carries_an_example(api):
    schema = api.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for name in (
        "Prediction",
        "BatchPrediction",
        "UserFeatures",
        "UnknownUser",
        "StaleFeatures",
        "Unavailable",
        "EventAccepted",
        "ModelInfo",
        "ModelReload",
        "Health",
        "Readiness",
        "UsageEvent",
    ):
        assert components[name].get("examples"), name
    for path, op in (("/predict", "post"), ("/predict/batch", "post")):
        assert schema["paths"][path][op]["requestBody"]["content"]["application/json"]["schema"]["examples"]
    assert api.get("/docs").status_code == 200
