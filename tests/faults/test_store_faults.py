"""The API on the real stack (PostgreSQL online store, Feast, MLflow, `streamflow serve`) under store faults and
champions that cannot serve: a stalled online table, a PostgreSQL restart under a client loop, a champion whose
artifacts are unreadable, a champion needing features the service does not serve."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import mlflow
import pytest

from ml.tracking import configure
from ml.train import SKOPS_TRUSTED_TYPES, build_pipeline
from streamflow.core.db import connect
from streamflow.core.stack import EmbeddedPostgres
from streamflow.features.online_store import online_table
from tests.conftest import server_home
from tests.faults.conftest import ClientLoop, wait_for
from tests.serving_support import CATEGORICAL, NUMERIC, training_frame
from tests.serving_world import World, api_server, clone_world, users_by_history, wait_http

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def world(world_template, tmp_path_factory) -> World:
    tmp = tmp_path_factory.mktemp("faults_world")
    with server_home("streamflow-faults-") as home:
        settings = clone_world(world_template, home)
        active, leavers = users_by_history(settings)
        log = tmp / "api.log"
        with api_server(settings, log) as (url, proc):
            yield World(settings, url, proc, log, active, leavers)


@pytest.fixture()
def api(world):
    with httpx.Client(base_url=world.url, timeout=30) as client:
        yield client


def test_a_locked_online_table_leaves_health_fast_and_predictions_503_within_the_deadline(world, api):
    """A PostgreSQL lock held on an online table stalls every read of it: /predict waits at most the online timeout
    (plus the route's slack) and answers 503 with Retry-After, while /health keeps answering at once."""
    user = world.active[1]
    assert api.post("/predict", json={"user_id": user}).status_code == 200
    timeout = world.settings.online_timeout_seconds
    answers: list[tuple[int, float, str | None]] = []

    def predict():
        with httpx.Client(base_url=world.url, timeout=30) as own:
            started = time.monotonic()
            r = own.post("/predict", json={"user_id": user})
            answers.append((r.status_code, time.monotonic() - started, r.headers.get("retry-after")))

    with connect(world.settings) as locker:
        locker.execute(f"lock table {online_table(world.settings, 'subscriptions_profile')} in access exclusive mode")
        threads = [threading.Thread(target=predict) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        health = []
        while any(t.is_alive() for t in threads):
            started = time.monotonic()
            assert api.get("/health").status_code == 200
            health.append(time.monotonic() - started)
            time.sleep(0.05)
        for t in threads:
            t.join(timeout=30)
        locker.rollback()  # the lock goes
    assert len(health) >= 5 and max(health) < 0.25, health
    assert {(s, r) for s, _t, r in answers} == {(503, "5")}, answers
    assert max(t for _s, t, _r in answers) < timeout + 1.5, answers
    deadline = time.monotonic() + 30
    while api.post("/predict", json={"user_id": user}).status_code != 200:
        assert time.monotonic() < deadline, "predictions did not recover after the lock was released"
        time.sleep(0.2)


def test_postgres_restarted_under_a_client_loop_answers_503_with_retry_after_then_200_without_a_restart(world):
    users = world.active[30:40]
    server = EmbeddedPostgres(world.settings)
    with ClientLoop(world.url, "/predict", [{"user_id": u} for u in users], limit=180) as loop:
        wait_for(loop, lambda a: a.status == 200, 30, "200 before the restart")
        server.down()
        try:
            wait_for(loop, lambda a: a.status == 503, 30, "503 while PostgreSQL is down")
            time.sleep(2)
        finally:
            server.up()
        back = wait_for(loop, lambda a: a.status == 200, 90, "200 after PostgreSQL came back")
        time.sleep(2)
    answers = loop.answers
    statuses = {a.status for a in answers}
    assert statuses == {200, 503}, statuses  # never a 500, a 404 or a dropped connection
    refused = [a for a in answers if a.status == 503]
    assert all(a.retry_after == "5" and a.body["store"] in ("online", "feature_registry") for a in refused)
    assert all(a.status == 200 for a in loop.since(back)), [a.status for a in loop.since(back)]
    assert max(a.seconds for a in answers) < world.settings.online_timeout_seconds + 1.5
    assert world.server.poll() is None  # the same process all along
    wait_http(f"{world.url}/ready", world.server, world.log, timeout=60)


# ---------------------------------------------------------------------------------------
# champions that cannot serve
# ---------------------------------------------------------------------------------------
def log_version(settings, features: list[str]) -> str:
    """Log and register a version of the served model, fitted here on ``features``; returns its version."""
    frame, y = training_frame()
    numeric = [f for f in features if f not in CATEGORICAL]
    frame = frame.assign(**{f: frame["months_active"] for f in numeric if f not in frame})
    pipeline = build_pipeline("logistic_regression", numeric, CATEGORICAL, 0).fit(frame[features], y)
    configure(settings)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            metadata={"threshold": 0.5, "features": features, "lineage": {"as_of": "2024-03-31"}},
            input_example=frame[features].head(3),
            pip_requirements=["scikit-learn"],
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
            registered_model_name=settings.model_name,
        )
    return str(info.registered_model_version), info


def load_failures(api: httpx.Client) -> float:
    for line in api.get("/metrics").text.splitlines():
        if line.startswith("streamflow_model_load_failures_total "):
            return float(line.split()[1])
    raise AssertionError("streamflow_model_load_failures_total is not exported")


def wait_failure(api: httpx.Client, version: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failure = api.get("/ready").json().get("model_load_failure")
        if failure and failure["version"] == version:
            return failure
        time.sleep(0.3)
    raise AssertionError(f"/ready never named v{version} as a load failure: {api.get('/ready').text}")


@pytest.mark.parametrize("fault", ["unreadable artifacts", "features not served"])
def test_a_champion_that_cannot_serve_leaves_the_old_one_serving_and_is_reported(world, api, fault):
    settings, client = world.settings, configure(world.settings)
    user = world.active[2]
    before = api.post("/predict", json={"user_id": user}).json()
    assert before["model_version"] == "1"
    failures = load_failures(api)
    if fault == "unreadable artifacts":
        version, info = log_version(settings, [*NUMERIC, *CATEGORICAL])
        stored = Path(client.get_logged_model(info.model_id).artifact_location.removeprefix("file://"))
        (serialized,) = [p for p in stored.glob("model.*") if p.suffix in (".skops", ".pkl")]  # a local folder here
        serialized.write_bytes(b"not a model")
    else:
        version, _info = log_version(settings, [*NUMERIC, "ghost_feature", *CATEGORICAL])
    client.set_registered_model_alias(settings.model_name, "champion", version)
    try:
        failure = wait_failure(api, version)
        if fault == "features not served":
            assert "ghost_feature" in failure["reason"] and "does not serve" in failure["reason"]
        else:
            assert "does not serve" not in failure["reason"], failure  # it failed to load, it was not refused
        ready = api.get("/ready")
        assert ready.status_code == 200 and ready.json()["model_version"] == "1"
        assert f"v{version} was not loaded" in ready.json()["detail"]["model"]
        after = api.post("/predict", json={"user_id": user})
        assert after.status_code == 200 and after.json() == before  # the old champion keeps serving
        assert load_failures(api) >= failures + 1
    finally:
        client.set_registered_model_alias(settings.model_name, "champion", "1")
    deadline = time.monotonic() + 30
    while api.get("/ready").json()["model_load_failure"] is not None:
        assert time.monotonic() < deadline, "the failure stayed after the alias moved back"
        time.sleep(0.3)
