"""Reasons over HTTP: /predict and /predict/batch explain each prediction from the exact values scored, with
labels from the dbt docs, `?reasons=N` per direction (0 for none), and a clear 422 for a bad N."""

from __future__ import annotations

import math
from dataclasses import replace

import httpx
import pytest

from serving.app import create_app
from serving.model import ModelHolder
from streamflow.core.runlog import OpsState
from streamflow.core.settings import Settings
from streamflow.features.labels import labels_from_docs
from tests.conftest import make_settings
from tests.serving_support import (
    MODEL_FEATURES,
    LocalModels,
    MemoryFeatures,
    serve_in_thread,
    serving_model,
    user_values,
)

TOKEN = "unit-test-token"
USERS = {"1111-AAAAA": 0, "2222-BBBBB": 1, "3333-CCCCC": 2}


def ops_state() -> OpsState:
    return OpsState({}, 0.1, False)


@pytest.fixture(scope="module", params=["hist_gradient_boosting", "logistic_regression"])
def api(request, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    labels = labels_from_docs(make_settings(home, dbt_target_path=home / "dbt" / "target"), MODEL_FEATURES)
    model = replace(serving_model("1", family=request.param), labels=labels)
    features = MemoryFeatures()
    for user, i in USERS.items():
        features.add(user, user_values(i))
    models = ModelHolder(LocalModels({"1": model}, alias="1"), poll_seconds=3600)
    app = create_app(Settings(_env_file=None, api_token=TOKEN, batch_limit=5), features, models, ops_state=ops_state)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client, model


def test_a_prediction_carries_its_reasons_with_labels_from_the_dbt_docs(api):
    client, model = api
    r = client.post("/predict", json={"user_id": "1111-AAAAA"})
    assert r.status_code == 200, r.text
    body = r.json()
    reasons = body["reasons"]
    assert len(reasons["up"]) + len(reasons["down"]) > 0 and len(reasons["up"]) <= 3 and len(reasons["down"]) <= 3
    assert 1 / (1 + math.exp(-reasons["margin"])) == pytest.approx(body["churn_probability"], abs=1e-12)
    _p, _m, contributions = model.scorer.explain([user_values(0)])
    expected = dict(zip(MODEL_FEATURES, contributions[0], strict=True))
    labels = {
        "contract_type": "Contract type",
        "monthly_fee": "Monthly fee of the plan",
        "months_active": "Months the customer has been subscribed, as of the drop (tenure)",
        "watch_hours_30d": "Hours watched in the last 30 days (minutes / 60)",
    }
    for reason in reasons["up"]:
        assert reason["contribution"] > 0
    for reason in reasons["down"]:
        assert reason["contribution"] < 0
    for reason in reasons["up"] + reasons["down"]:
        assert reason["contribution"] == pytest.approx(expected[reason["feature"]], abs=1e-12)
        assert reason["value"] == body["features"][reason["feature"]]["value"]  # the value served is the one explained
        assert (
            reason["label"] == labels.get(reason["feature"], reason["label"]) and reason["label"] != reason["feature"]
        )
    ranked = sorted(expected.items(), key=lambda kv: -kv[1])
    assert [r["feature"] for r in reasons["up"]] == [f for f, c in ranked if c > 0][:3]
    assert [r["feature"] for r in reasons["down"]] == [f for f, c in ranked[::-1] if c < 0][:3]
    assert reasons["base"] + sum(expected.values()) == pytest.approx(reasons["margin"], abs=1e-9)


def test_reasons_n_sets_how_many_and_zero_turns_them_off(api):
    client, _model = api
    one = client.post("/predict?reasons=1", json={"user_id": "2222-BBBBB"}).json()["reasons"]
    assert len(one["up"]) <= 1 and len(one["down"]) <= 1 and one["up"] + one["down"]
    every = client.post("/predict?reasons=10", json={"user_id": "2222-BBBBB"}).json()["reasons"]
    assert len(every["up"]) + len(every["down"]) <= len(MODEL_FEATURES)
    assert every["up"][: len(one["up"])] == one["up"] and every["down"][: len(one["down"])] == one["down"]
    none = client.post("/predict?reasons=0", json={"user_id": "2222-BBBBB"})
    assert none.status_code == 200 and none.json()["reasons"] is None
    assert (
        none.json()["churn_probability"]
        == client.post("/predict", json={"user_id": "2222-BBBBB"}).json()["churn_probability"]
    )


@pytest.mark.parametrize("value", ["-1", "11", "three", "1.5", ""])
def test_a_bad_reasons_count_is_422_naming_the_query_parameter(api, value):
    client, _model = api
    r = client.post(f"/predict?reasons={value}", json={"user_id": "1111-AAAAA"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["query", "reasons"]
    assert client.post(f"/predict/batch?reasons={value}", json={"user_ids": ["1111-AAAAA"]}).status_code == 422


def test_a_batch_explains_every_prediction_as_a_single_prediction_would(api):
    client, _model = api
    batch = client.post("/predict/batch?reasons=2", json={"user_ids": [*USERS, "9999-ZZZZZ"]}).json()
    assert [p["user_id"] for p in batch["predictions"]] == list(USERS)
    assert [e["status"] for e in batch["errors"]] == [404]
    for p in batch["predictions"]:
        single = client.post("/predict?reasons=2", json={"user_id": p["user_id"]}).json()
        assert p["reasons"]["up"] == single["reasons"]["up"] and p["reasons"]["down"] == single["reasons"]["down"]
        assert p["reasons"]["margin"] == pytest.approx(single["reasons"]["margin"], abs=1e-12)
    off = client.post("/predict/batch?reasons=0", json={"user_ids": list(USERS)}).json()
    assert all(p["reasons"] is None for p in off["predictions"])


def test_the_reasons_parameter_and_body_are_documented(api):
    client, _model = api
    spec = client.get("/openapi.json").json()
    for path in ("/predict", "/predict/batch"):
        params = {p["name"]: p for p in spec["paths"][path]["post"].get("parameters", [])}
        assert params["reasons"]["schema"] == {"type": "integer", "minimum": 0, "maximum": 10, "default": 3}
    assert {"base", "margin", "up", "down"} <= set(spec["components"]["schemas"]["Reasons"]["properties"])
