"""The prediction API over HTTP on loopback, on the real stack: `streamflow serve` reading the PostgreSQL online
store through Feast and the champion from the MLflow registry.

The module's platform is private (tests/serving_world.py): a copy of the session's built warehouse on its own
PostgreSQL, so the last tests can stop and restart that server and rebuild its served month. Tests that change shared
state (the champion, the server, the served month) come last, in file order.
"""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from ml.explain import Explainer
from ml.promote import promote
from ml.tracking import configure, load_model_alias, load_version
from ml.train import train
from serving.app import create_app
from serving.model import MlflowModelSource, ModelHolder
from streamflow.core.names import CHALLENGER
from streamflow.core.stack import EmbeddedPostgres
from streamflow.drops.ingest import ingest
from streamflow.features import materialize, online
from streamflow.features.online import OnlineReader
from streamflow.warehouse.build import build
from tests.conftest import WAREHOUSE_MONTHS, server_home
from tests.integration.dbt_reference import copy_drop
from tests.serving_support import serve_in_thread
from tests.serving_world import (
    FEB,
    JAN,
    MAR,
    READ_TOKEN,
    TOKEN,
    World,
    api_server,
    clone_world,
    users_by_history,
    wait_http,
    write_old_values,
)

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {TOKEN}"}  # the admin token: every route
READER = {"Authorization": f"Bearer {READ_TOKEN}"}  # the read token: predictions and features
UNKNOWN = [f"0000-QQQ{a}{b}" for a in "ABCDEFGHIJ" for b in "ABC"]  # valid ids nobody has


@pytest.fixture(scope="module")
def world(world_template, tmp_path_factory) -> World:
    tmp = tmp_path_factory.mktemp("api_world")
    with server_home("streamflow-api-") as home:
        settings = clone_world(world_template, home, api_read_token=READ_TOKEN)
        active, leavers = users_by_history(settings)
        write_old_values(settings, leavers[0], JAN)  # a user whose online values stayed at January
        log = tmp / "api.log"
        with api_server(settings, log) as (url, proc):
            yield World(settings, url, proc, log, active, leavers)


@pytest.fixture()
def api(world) -> httpx.Client:
    """A client holding the read token (the module's server requires it on predictions and features)."""
    with httpx.Client(base_url=world.url, timeout=30, headers=READER) as client:
        yield client


def model_frame(body: dict, features_: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{name: body["features"][name]["value"] for name in features_}])


# ---------------------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------------------
def test_the_service_is_up_and_ready_with_the_champion_and_the_business_clock(api):
    assert api.get("/health").json() == {"status": "ok"}
    ready = api.get("/ready")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] and body["model_loaded"] and body["online_store"] and body["registry"]
    assert body["model_version"] == "1" and body["business_clock"] == "2024-03-31T00:00:00Z"


def test_a_known_user_gets_the_champions_own_probability_on_the_same_features(world, api):
    user = world.active[3]
    r = api.post("/predict", json={"user_id": user})
    assert r.status_code == 200, r.text
    body = r.json()
    champion = load_model_alias(world.settings, "champion")
    assert body["model_version"] == champion.version == "1"
    assert 0.0 <= body["churn_probability"] <= 1.0
    expected = float(champion.predict_proba(model_frame(body, champion.features))[0])
    assert body["churn_probability"] == pytest.approx(expected, abs=1e-12)
    assert body["churn"] == (expected >= champion.threshold) and body["threshold"] == champion.threshold
    # the features used are the online store's, each with its view and as_of
    served = online.online_features(world.settings, user, "churn_model_v1")
    assert list(body["features"]) == champion.features
    assert {k: v["value"] for k, v in body["features"].items()} == pytest.approx(served.values)
    assert {v["as_of"] for v in body["features"].values()} == {"2024-03-31T00:00:00Z"}
    assert body["features"]["monthly_fee"]["feature_view"] == "subscriptions_profile"
    assert body["features"]["fee_per_active_month"]["feature_view"] == "derived_ratios"


def test_an_unknown_user_is_404_naming_the_missing_features(world, api):
    for user in (UNKNOWN[0], world.leavers[1]):  # never seen, and a subscriber who left in January
        r = api.post("/predict", json={"user_id": user})
        assert r.status_code == 404, r.text
        body = r.json()
        assert body["user_id"] == user and "contract_type" in body["missing_features"]
        assert set(body["missing_features"]) == set(load_model_alias(world.settings, "champion").features)


@pytest.mark.parametrize(
    "content",
    [
        b"{}",
        b'{"user_id": "7590-vhveg"}',
        b'{"user_id": ["7590-VHVEG"]}',
        b"user_id=7590-VHVEG",
        b'{"user_id": "7590-VHVEG", "more": true}',
    ],
)
def test_a_bad_body_or_id_format_is_422(api, content):
    r = api.post("/predict", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert api.get("/features/7590_VHVEG").status_code == 422


def test_a_user_whose_features_are_older_than_their_ttl_is_refused_with_409_and_their_as_of(world, api):
    user = world.leavers[0]  # online values of January, business clock March: 60 days > 35-day TTL
    r = api.post("/predict", json={"user_id": user})
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["business_clock"] == "2024-03-31T00:00:00Z"
    stale = {v["feature_view"]: v for v in body["stale"]}
    assert set(stale) == {"subscriptions_profile", "usage_agg_30d", "payments_agg_90d", "support_agg_90d"}
    assert {v["as_of"] for v in stale.values()} == {"2024-01-31T00:00:00Z"}
    assert stale["usage_agg_30d"]["ttl_seconds"] == 35 * 86400 and stale["usage_agg_30d"]["age_seconds"] == 60 * 86400
    assert "watch_hours_30d" in stale["usage_agg_30d"]["features"]
    assert api.get(f"/features/{user}").status_code == 409


def test_a_batch_of_100_mixed_known_and_unknown_users_answers_each_like_predict(world, api):
    known = world.active[10:80]
    ids = [u for pair in zip(known, UNKNOWN, strict=False) for u in pair] + known[len(UNKNOWN) :]
    assert len(ids) == 100
    r = api.post("/predict/batch", json={"user_ids": ids})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "1"
    assert [p["user_id"] for p in body["predictions"]] == known
    assert [(e["user_id"], e["status"]) for e in body["errors"]] == [(u, 404) for u in UNKNOWN]
    assert all(e["missing_features"] for e in body["errors"])
    for prediction in body["predictions"][::7]:
        single = api.post("/predict", json={"user_id": prediction["user_id"]}).json()
        assert prediction == single


def test_a_batch_over_the_limit_is_413(world, api):
    r = api.post("/predict/batch", json={"user_ids": world.active[:151]})
    assert r.status_code == 413 and "limit is 150" in r.json()["detail"]


def test_model_reports_the_champion_version_alias_metrics_and_trained_as_of(world, api):
    body = api.get("/model").json()
    assert body["version"] == "1" and body["alias"] == "champion" and body["name"] == world.settings.model_name
    assert body["trained_as_of"] == "2024-03-31" and 0.5 < body["metrics"]["roc_auc"] <= 1
    assert body["scorer"] == "compiled"


# ---------------------------------------------------------------------------------------
# real-time usage, auth
# ---------------------------------------------------------------------------------------
def test_a_pushed_event_shows_in_features_with_its_event_time(world, api):
    user = world.active[5]
    newer = {"user_id": user, "watch_minutes_today": 87.5, "last_session_at": "2024-04-02T20:15:00Z"}
    r = api.post("/events", json=newer, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == {"user_id": user, "accepted": True, "online": True, "event_time": "2024-04-02T20:15:00Z"}
    shown = api.get(f"/features/{user}").json()["features"]
    assert shown["watch_minutes_today"] == {
        "value": 87.5,
        "feature_view": "usage_realtime",
        "as_of": "2024-04-02T20:15:00Z",
        "stale": False,
    }
    assert shown["last_session_at"]["value"] == "2024-04-02T20:15:00Z"
    # an older event is recorded offline only: the newer value stays online
    older = {**newer, "watch_minutes_today": 5.0, "last_session_at": "2024-04-01T08:00:00Z"}
    assert api.post("/events", json=older, headers=AUTH).json()["online"] is False
    assert api.get(f"/features/{user}").json()["features"]["watch_minutes_today"]["value"] == 87.5


def test_a_pushed_value_more_than_a_day_before_the_business_clock_is_shown_flagged_stale(world, api):
    user = world.active[6]
    event = {"user_id": user, "watch_minutes_today": 12.0, "last_session_at": "2024-03-20T09:00:00Z"}
    assert api.post("/events", json=event, headers=AUTH).status_code == 200
    body = api.get(f"/features/{user}").json()
    assert body["features"]["watch_minutes_today"]["stale"] is True
    assert body["features"]["monthly_fee"]["stale"] is False
    assert api.post("/predict", json={"user_id": user}).status_code == 200  # never a model input


def test_the_admin_reload_answers_with_the_registry_state(api):
    reload = api.post("/admin/model/reload", headers=AUTH)
    assert reload.status_code == 200 and reload.json() == {
        "changed": False,
        "version": "1",
        "registry": True,
        "detail": None,
    }


# ---------------------------------------------------------------------------------------
# tokens: every route of the app against every credential
# ---------------------------------------------------------------------------------------
OPEN, READ, ADMIN = "open", "read", "admin"
ACCESS = {  # every route of the app (method, path) -> the token it takes; a new route needs a row here
    ("GET", "/health"): OPEN,
    ("GET", "/ready"): OPEN,
    ("GET", "/model"): OPEN,
    ("GET", "/metrics"): OPEN,
    ("GET", "/openapi.json"): OPEN,
    ("GET", "/docs"): OPEN,
    ("GET", "/docs/oauth2-redirect"): OPEN,
    ("GET", "/redoc"): OPEN,
    ("POST", "/predict"): READ,
    ("POST", "/predict/batch"): READ,
    ("GET", "/features/{user_id}"): READ,
    ("POST", "/events"): ADMIN,
    ("POST", "/admin/model/reload"): ADMIN,
}
CREDENTIALS = {
    "none": {},
    "wrong": {"Authorization": "Bearer not-the-token"},
    "read": READER,
    "admin": AUTH,
}
EXPECTED = {  # (what the route takes, whether a read token is configured) -> credential -> status
    (OPEN, True): {"none": 200, "wrong": 200, "read": 200, "admin": 200},
    (OPEN, False): {"none": 200, "wrong": 200, "read": 200, "admin": 200},
    (READ, True): {"none": 401, "wrong": 401, "read": 200, "admin": 200},
    (READ, False): {"none": 200, "wrong": 200, "read": 200, "admin": 200},  # no read token: open
    (ADMIN, True): {"none": 401, "wrong": 401, "read": 403, "admin": 200},
    (ADMIN, False): {"none": 401, "wrong": 401, "read": 401, "admin": 200},  # READ_TOKEN is then just wrong
}


def route_table(app) -> set[tuple[str, str]]:
    """Every (method, path) the app answers, from its own route table (HEAD aside)."""
    return {(m, route.path) for route in app.routes for m in getattr(route, "methods", ()) if m != "HEAD"}


def valid_request(world: World, method: str, path: str, i: int) -> dict:
    """A request to the route that its token aside succeeds (200)."""
    user = world.active[40 + i]
    if path == "/predict":
        return {"json": {"user_id": user}}
    if path == "/predict/batch":
        return {"json": {"user_ids": [user, world.active[41 + i]]}}
    if path == "/events":
        return {"json": {"user_id": user, "watch_minutes_today": 2.0, "last_session_at": "2024-04-02T10:00:00Z"}}
    return {}


def token_matrix(world: World, url: str, read_token: bool) -> tuple[dict, dict]:
    """(answered, expected): route -> credential -> status, over real HTTP."""
    answered: dict[str, dict[str, int]] = {}
    expected: dict[str, dict[str, int]] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for i, ((method, path), access) in enumerate(sorted(ACCESS.items())):
            concrete = path.replace("{user_id}", world.active[40 + i])
            row = answered[f"{method} {path}"] = {}
            for name, headers in CREDENTIALS.items():
                row[name] = client.request(method, concrete, headers=headers, **valid_request(world, method, path, i))
                row[name] = row[name].status_code
            expected[f"{method} {path}"] = EXPECTED[(access, read_token)]
    return answered, expected


@pytest.fixture(scope="module")
def open_reads(world):
    """The same platform served without a read token, in this process (real Feast, PostgreSQL, MLflow)."""
    settings = world.settings.model_copy(update={"api_read_token": None})
    app = create_app(settings, OnlineReader(settings), ModelHolder(MlflowModelSource(settings), 3600))
    with serve_in_thread(app) as url:
        wait_http(f"{url}/ready")
        yield app, url


def test_every_route_of_the_app_has_a_row_in_the_token_matrix(open_reads, api):
    app, _url = open_reads
    assert route_table(app) == set(ACCESS), "a route was added or removed: give it a row in ACCESS"
    documented = api.get("/openapi.json").json()["paths"]
    assert {(m.upper(), p) for p, ops in documented.items() for m in ops} <= set(ACCESS)


def test_token_matrix_of_streamflow_serve_with_a_read_token(world):
    """`streamflow serve` with STREAMFLOW_API_TOKEN and STREAMFLOW_API_READ_TOKEN: each route x each credential."""
    answered, expected = token_matrix(world, world.url, read_token=True)
    assert answered == expected


def test_token_matrix_without_a_read_token(world, open_reads):
    """The same app with no read token: predictions and features open, the admin routes still take the admin token."""
    _app, url = open_reads
    answered, expected = token_matrix(world, url, read_token=False)
    assert answered == expected


def test_a_refused_request_says_which_token_the_route_takes(world):
    with httpx.Client(base_url=world.url, timeout=30) as client:
        missing = client.post("/predict", json={"user_id": world.active[7]})
        assert missing.headers["www-authenticate"] == "Bearer"
        assert "STREAMFLOW_API_READ_TOKEN" in missing.json()["detail"]
        event = {"user_id": world.active[7], "watch_minutes_today": 1.0, "last_session_at": "2024-04-02T10:00:00Z"}
        for headers in ({"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):  # not a bearer credential
            assert client.post("/events", json=event, headers=headers).status_code == 401
        read = client.post("/admin/model/reload", headers=READER)
        assert read.status_code == 403 and "STREAMFLOW_API_TOKEN" in read.json()["detail"]


def test_metrics_count_requests_by_route_and_status_and_report_the_model_and_feature_age(api):
    api.post("/predict", json={"user_id": UNKNOWN[1]})
    text = api.get("/metrics").text
    assert 'streamflow_http_requests_total{method="POST",route="/predict",status="404"}' in text
    assert 'streamflow_http_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'streamflow_model_info{alias="champion",trained_as_of="2024-03-31",version="1"} 1.0' in text
    assert 'streamflow_online_feature_age_seconds{feature_view="usage_agg_30d"} 0.0' in text
    assert "streamflow_ready 1.0" in text


# ---------------------------------------------------------------------------------------
# the whole OpenAPI surface, fuzzed
# ---------------------------------------------------------------------------------------
OPERATIONS = [
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/features/{user_id}"),
    ("POST", "/predict"),
    ("POST", "/predict/batch"),
    ("POST", "/events"),
    ("GET", "/model"),
    ("POST", "/admin/model/reload"),
    ("GET", "/metrics"),
]


@pytest.fixture(scope="module")
def openapi(world):
    return schemathesis.openapi.from_url(f"{world.url}/openapi.json")


def test_the_fuzzed_operations_are_every_operation_of_the_schema(api):
    paths = api.get("/openapi.json").json()["paths"]
    assert {(method.upper(), path) for path, ops in paths.items() for method in ops} == set(OPERATIONS)


WITH_INPUT = [("GET", "/features/{user_id}"), ("POST", "/predict"), ("POST", "/predict/batch"), ("POST", "/events")]
FUZZ = [(m, p, "positive") for m, p in OPERATIONS] + [(m, p, "negative") for m, p in WITH_INPUT]


@pytest.mark.parametrize(("method", "path", "mode"), FUZZ, ids=[f"{m} {p} {g}" for m, p, g in FUZZ])
def test_fuzzing_the_openapi_schema_finds_no_server_error(world, openapi, method, path, mode):
    """Schemathesis generates requests from the app's own OpenAPI: valid ones (their responses must match the
    documented status codes and schemas) and invalid ones; none may get a 5xx other than a documented 503."""
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    checks = [not_a_server_error]
    if generation == GenerationMode.POSITIVE:
        checks += [status_code_conformance, response_schema_conformance]
    answered: list[int] = []

    @given(case=openapi[path][method].as_strategy(generation))
    @hypothesis_settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzz(case):
        response = case.call(base_url=world.url, headers=AUTH, timeout=30)
        answered.append(response.status_code)
        case.validate_response(response, checks=checks)

    fuzz()
    assert answered and all(code < 500 for code in answered), answered


# ---------------------------------------------------------------------------------------
# a new champion without a restart
# ---------------------------------------------------------------------------------------
def test_promoting_a_new_champion_switches_model_and_predictions_within_the_poll_interval_without_errors(world):
    base = world.settings
    swap = base.model_copy(
        update={"model_name": "streamflow_churn_swap", "promotion_margin": -1.0, "promotion_logloss_tolerance": 100.0}
    )
    client = configure(base)
    train(base, FEB)  # version 2 of the main model: trained on January's labels only (the champion stays 1)
    for version in ("1", "2"):
        client.copy_model_version(f"models:/{base.model_name}/{version}", swap.model_name)
    client.set_registered_model_alias(swap.model_name, "champion", "1")
    app = create_app(swap, OnlineReader(swap), ModelHolder(MlflowModelSource(swap), swap.model_poll_seconds))
    user = world.active[12]
    seen: list[tuple[float, int, str | None]] = []
    stop = threading.Event()
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30, headers=READER) as api:
        assert api.get("/model").json()["version"] == "1"

        def loop():
            while not stop.is_set():
                r = api.post("/predict", json={"user_id": user})
                seen.append((time.monotonic(), r.status_code, r.json().get("model_version")))

        thread = threading.Thread(target=loop)
        thread.start()
        try:
            time.sleep(1.0)
            client.set_registered_model_alias(swap.model_name, CHALLENGER, "2")
            result = promote(swap)
            promoted_at = time.monotonic()
            assert result.decision.promote and result.champion_after == "2", result.as_dict()
            deadline = promoted_at + 60
            while time.monotonic() < deadline and not any(v == "2" for _t, _s, v in seen[-1:]):
                time.sleep(0.05)
            time.sleep(1.0)
        finally:
            stop.set()
            thread.join(timeout=60)
        model = api.get("/model").json()
        after = api.post("/predict", json={"user_id": user}).json()
    statuses = {s for _t, s, _v in seen}
    versions = [v for _t, _s, v in seen]
    assert statuses == {200}, f"a request failed during the swap: {statuses}"
    assert versions[0] == "1" and versions[-1] == "2"
    switch = versions.index("2")
    assert set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"2"}  # one switch, never back
    first_v2 = seen[switch][0]
    v2 = load_version(swap, "2")
    assert first_v2 - promoted_at <= swap.model_poll_seconds + 20  # one poll, plus loading the version
    assert model["version"] == "2" and model["trained_as_of"] == "2024-02-29"
    expected = float(v2.predict_proba(model_frame(after, v2.features))[0])
    assert after["model_version"] == "2" and after["churn_probability"] == pytest.approx(expected, abs=1e-12)
    v1 = load_version(swap, "1")
    assert after["churn_probability"] != pytest.approx(float(v1.predict_proba(model_frame(after, v1.features))[0]))


# ---------------------------------------------------------------------------------------
# the store goes away and comes back
# ---------------------------------------------------------------------------------------
def test_postgres_down_answers_503_and_not_ready_and_the_service_recovers_without_a_restart(world, api):
    """In the embedded stack the online store, the Feast registry and the MLflow registry share one server: while
    it is away predictions are 503, the loaded champion stays, registry polls fail and are counted."""
    user = world.active[20]
    before = api.post("/predict", json={"user_id": user})
    assert before.status_code == 200
    server = EmbeddedPostgres(world.settings)
    server.down()
    try:
        down = api.post("/predict", json={"user_id": user})
        assert down.status_code == 503, down.text
        assert down.json()["store"] in ("online", "feature_registry") and "Traceback" not in down.text
        ready = api.get("/ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False and ready.json()["online_store"] is False
        assert api.get(f"/features/{user}").status_code == 503
        assert api.post("/predict", content=b"{}").status_code == 422  # validated before any I/O
        assert api.get("/health").status_code == 200
        deadline = time.monotonic() + 30
        while api.get("/ready").json()["registry"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert api.get("/ready").json()["registry"] is False  # a registry poll failed ...
        assert api.get("/model").json()["version"] == "1"  # ... and the loaded champion stays
    finally:
        server.up()
    wait_http(f"{world.url}/ready", world.server, world.log, timeout=90)
    again = api.post("/predict", json={"user_id": user})
    assert again.status_code == 200, again.text
    assert again.json()["churn_probability"] == before.json()["churn_probability"]
    assert world.server.poll() is None  # the same process, never restarted
    deadline = time.monotonic() + 30
    while not api.get("/ready").json()["registry"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert api.get("/ready").json()["registry"] is True
    metrics = api.get("/metrics").text
    for store in ("online", "registry"):
        assert f'streamflow_store_errors_total{{store="{store}"}}' in metrics
    assert 'route="/predict",status="503"' in metrics


# ---------------------------------------------------------------------------------------
# a corrected month reaches the reasons
# ---------------------------------------------------------------------------------------
ADDED = 12  # events added to one user's corrected March


def _failed_payments(frame: pd.DataFrame, user: str) -> pd.DataFrame:
    days = [f"2024-03-{d + 2:02d}T12:00:00Z" for d in range(ADDED)]
    rows = {"payment_id": [f"PFIX{d:09d}" for d in range(ADDED)], "attempted_at": days}
    return pd.concat([frame, pd.DataFrame({**rows, "user_id": user, "amount": "19.99", "status": "failed"})])


def _open_tickets(frame: pd.DataFrame, user: str) -> pd.DataFrame:
    days = [f"2024-03-{d + 2:02d}T12:00:00Z" for d in range(ADDED)]
    rows = {"ticket_id": [f"TFIX{d:09d}" for d in range(ADDED)], "opened_at": days}
    return pd.concat([frame, pd.DataFrame({**rows, "user_id": user, "resolved_at": "", "category": "billing"})])


def _more_failed_payments(values: dict) -> dict:
    return {**values, "failed_payments_90d": values["failed_payments_90d"] + ADDED}


def _more_open_tickets(values: dict) -> dict:  # unresolved: the average resolution time stays
    tickets = values["support_tickets_90d"] + ADDED
    per_month = tickets / min(max(values["months_active"], 1), 3)  # feature_repo/on_demand.py
    return {**values, "support_tickets_90d": tickets, "tickets_per_active_month": per_month}


# model inputs a corrected drop raises by adding one user's events: (drop file, its edit, the served values after)
RAISABLE = {
    "failed_payments_90d": ("payments", _failed_payments, _more_failed_payments),
    "support_tickets_90d": ("tickets", _open_tickets, _more_open_tickets),
}


def raised_choice(champion, served: pd.DataFrame) -> tuple[str, int, float]:
    """From the champion's own contributions: the raisable input whose contribution grows most on average when
    raised, the row (user) of ``served`` whose top `up` reason it is not yet and then becomes with the margin
    nearest 0, and its contribution for that user now."""
    explainer = Explainer.of(champion.pipeline, champion.features)
    margins, now = explainer.explain(served)
    choices = []
    for feature, (_file, _edit, raise_) in RAISABLE.items():
        j = champion.features.index(feature)
        raised_margins, raised = explainer.explain(pd.DataFrame([raise_(r) for r in served.to_dict("records")]))
        becomes = [
            i
            for i in range(len(served))
            if now[i].argmax() != j and raised[i].argmax() == j and raised[i, j] > max(now[i, j], 0)
            if raised_margins[i] > margins[i]
        ]
        gain = float(np.mean(raised[:, j] - now[:, j]))
        if gain > 0 and becomes:
            i = min(becomes, key=lambda i: abs(margins[i]))  # the least certain: its probability can move most
            choices.append((gain, feature, i, float(now[i, j])))
    assert choices, "the champion counts none of the raisable inputs up: no reason can be moved by raising one"
    _gain, feature, i, contribution = max(choices)
    return feature, i, contribution


def test_a_corrected_month_makes_the_raised_input_a_users_top_reason_and_leaves_the_others(
    world, api, session_drops, tmp_path
):
    """A corrected March drop raises one model input of one user (events added); after the rebuild and the
    materialization the same server names that input, with its new value, as the user's top `up` reason, with
    a larger contribution and a higher probability, and every other user's answer is unchanged."""
    settings = world.settings.model_copy(update={"dbt_target_path": tmp_path / "target"})
    shutil.copytree(world.settings.dbt_target_dir, settings.dbt_target_dir)  # a target of its own, parse cache too
    champion = load_model_alias(settings, "champion")
    users = world.active[-150:]  # the batch limit; none of the users the other tests use
    before = api.post("/predict/batch?reasons=3", json={"user_ids": users}).json()["predictions"]
    assert [p["user_id"] for p in before] == users
    served = pd.concat([model_frame(p, champion.features) for p in before], ignore_index=True)
    feature, i, contribution = raised_choice(champion, served)
    user = users[i]
    first = api.post("/predict?reasons=3", json={"user_id": user}).json()
    assert first == before[i] and first["reasons"]["up"][0]["feature"] != feature

    march = session_drops[WAREHOUSE_MONTHS - 1]
    file, edit, _raise = RAISABLE[feature]
    ingest(settings, [copy_drop(march, tmp_path / march.name, {file: lambda frame: edit(frame, user)})])
    build(settings)
    assert materialize.materialize(settings, MAR).skipped == []  # the rebuilt month is written over the served one

    now = api.post("/predict?reasons=3", json={"user_id": user}).json()
    top = now["reasons"]["up"][0]
    assert top["feature"] == feature and top["label"] != feature
    assert top["value"] == now["features"][feature]["value"] == first["features"][feature]["value"] + ADDED
    assert top["contribution"] > max(contribution, 0)
    assert now["churn_probability"] > first["churn_probability"]
    assert now["reasons"]["margin"] > first["reasons"]["margin"]
    after = api.post("/predict/batch?reasons=3", json={"user_ids": users}).json()["predictions"]
    assert after[i] == now
    assert after[:i] + after[i + 1 :] == before[:i] + before[i + 1 :]  # the same values, probabilities and reasons
