"""The API's tokens: what a header grants, where the admin token comes from (set, generated once on the embedded stack,
a start-up error on an external database), the read token on the hot paths, and the commands that start or show them.

The same rules route by route over real HTTP on the real stack: tests/integration/test_api.py (the token matrix).
"""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serving.app import create_app
from serving.deps import ApiTokenError, Tokens, api_tokens
from serving.model import ModelHolder
from streamflow.core.runlog import OpsState
from streamflow.core.settings import Settings
from streamflow.core.stack import api_token_file, embedded_api_token
from tests.conftest import make_settings, run_cli
from tests.serving_support import LocalModels, MemoryFeatures, serve_in_thread, serving_model, user_values

ADMIN, READ = "admin-unit-token", "read-unit-token"
EXTERNAL = "postgresql://streamflow:pw@db.example.internal:5432/streamflow"
KNOWN = "1111-AAAAA"


def ops_state() -> OpsState:
    return OpsState({}, None, False)


# ---------------------------------------------------------------------------------------
# what a header grants
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "granted"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        (f"Bearer {ADMIN}", "admin"),
        (f"bearer {ADMIN}", "admin"),
        (f"BEARER  {ADMIN} ", "admin"),
        (f"Bearer {READ}", "read"),
        (f"Bearer {ADMIN}x", None),
        (f"Bearer {ADMIN[:-1]}", None),
        (f"Basic {ADMIN}", None),
        (ADMIN, None),
        (f"Token {READ}", None),
    ],
)
def test_a_header_grants_admin_read_or_nothing(header, granted):
    assert Tokens(ADMIN.encode(), READ.encode()).access(header) == granted


def test_without_a_read_token_only_the_admin_token_is_recognised():
    tokens = Tokens(ADMIN.encode())
    assert tokens.access(f"Bearer {ADMIN}") == "admin"
    assert tokens.access(f"Bearer {READ}") is None and tokens.access("Bearer ") is None


# ---------------------------------------------------------------------------------------
# where the admin token comes from
# ---------------------------------------------------------------------------------------
def test_a_set_admin_token_is_used_and_nothing_is_written(tmp_path):
    settings = make_settings(tmp_path / "home", api_token=ADMIN, api_read_token=READ)
    assert api_tokens(settings) == Tokens(ADMIN.encode(), READ.encode())
    assert not api_token_file(settings).exists()


def test_the_embedded_stack_generates_the_admin_token_once_with_mode_0600(tmp_path):
    settings = make_settings(tmp_path / "home")
    first = api_tokens(settings)
    path = api_token_file(settings)
    assert path == (tmp_path / "home" / "secrets" / "api_token").resolve()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(first.admin) >= 40 and first.read is None
    assert api_tokens(settings) == first  # read, not generated again
    assert api_tokens(make_settings(tmp_path / "other")).admin != first.admin  # each home has its own
    assert [p.name for p in path.parent.iterdir()] == ["api_token"]  # no file left aside


def test_workers_starting_together_agree_on_one_generated_token(tmp_path):
    settings = make_settings(tmp_path / "home")
    with ThreadPoolExecutor(16) as pool:
        tokens = set(pool.map(lambda _i: embedded_api_token(settings), range(64)))
    assert len(tokens) == 1 and tokens == {api_token_file(settings).read_text()}


def test_an_empty_admin_token_counts_as_unset(tmp_path):
    settings = make_settings(tmp_path / "home", api_token="", api_read_token="")
    tokens = api_tokens(settings)
    assert tokens.admin == api_token_file(settings).read_bytes() and tokens.read is None


@pytest.mark.parametrize("token", [None, ""])
def test_an_external_database_without_an_admin_token_is_a_start_up_error_naming_the_variable(tmp_path, token):
    settings = make_settings(tmp_path / "home", database_url=EXTERNAL, api_token=token)
    with pytest.raises(ApiTokenError, match="STREAMFLOW_API_TOKEN is not set") as caught:
        api_tokens(settings)
    assert "STREAMFLOW_DATABASE_URL" in str(caught.value) and "secrets" in caught.value.hint
    assert "\n" not in str(caught.value)
    assert not api_token_file(settings).exists()
    with pytest.raises(ApiTokenError):  # the app never starts open either
        create_app(settings, MemoryFeatures(), ModelHolder(LocalModels({}, None), 3600), ops_state=ops_state)


def test_an_external_database_with_an_admin_token_starts(tmp_path):
    settings = make_settings(tmp_path / "home", database_url=EXTERNAL, api_token=ADMIN)
    assert api_tokens(settings) == Tokens(ADMIN.encode())


def test_a_read_token_equal_to_the_admin_token_is_refused(tmp_path):
    settings = make_settings(tmp_path / "home", api_token=ADMIN, api_read_token=ADMIN)
    with pytest.raises(ApiTokenError, match="STREAMFLOW_API_READ_TOKEN equals the admin token"):
        api_tokens(settings)


# ---------------------------------------------------------------------------------------
# the routes, in memory, with a read token
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guarded():
    features = MemoryFeatures()
    features.add(KNOWN, user_values(0))
    models = ModelHolder(LocalModels({"1": serving_model("1")}, alias="1"), poll_seconds=3600)
    settings = Settings(_env_file=None, api_token=ADMIN, api_read_token=READ)
    app = create_app(settings, features, models, ops_state=ops_state)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


READ_ROUTES = [
    ("POST", "/predict", {"user_id": KNOWN}),
    ("POST", "/predict/batch", {"user_ids": [KNOWN]}),
    ("GET", f"/features/{KNOWN}", None),
]


@pytest.mark.parametrize(("method", "path", "body"), READ_ROUTES, ids=[p for _m, p, _b in READ_ROUTES])
def test_read_routes_take_the_read_or_the_admin_token(guarded, method, path, body):
    for headers in ({}, bearer("wrong"), {"Authorization": f"Basic {READ}"}):
        refused = guarded.request(method, path, json=body, headers=headers)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", refused.text
        assert "STREAMFLOW_API_READ_TOKEN" in refused.json()["detail"]
    for token in (READ, ADMIN):
        answer = guarded.request(method, path, json=body, headers=bearer(token))
        assert answer.status_code == 200, answer.text


def test_a_read_route_refuses_a_request_without_the_token_before_reading_its_body(guarded):
    assert guarded.post("/predict", content=b"not json").status_code == 401
    assert guarded.post("/predict/batch", content=b"{").status_code == 401
    assert guarded.post("/predict", content=b"not json", headers=bearer(READ)).status_code == 422


def test_the_read_token_on_an_admin_route_is_403_and_changes_nothing(guarded):
    event = {"user_id": KNOWN, "watch_minutes_today": 5.0, "last_session_at": "2024-04-02T20:00:00Z"}
    for path, body in (("/events", event), ("/admin/model/reload", None)):
        refused = guarded.post(path, json=body, headers=bearer(READ))
        assert refused.status_code == 403 and "admin token" in refused.json()["detail"]
        assert guarded.post(path, json=body).status_code == 401
    features = guarded.get(f"/features/{KNOWN}", headers=bearer(READ)).json()["features"]
    assert "watch_minutes_today" not in features or features["watch_minutes_today"]["value"] is None
    assert guarded.post("/events", json=event, headers=bearer(ADMIN)).status_code == 200


def test_an_admin_route_refuses_before_validating_the_body(guarded):
    assert guarded.post("/events", json={"user_id": "nope"}).status_code == 401
    assert guarded.post("/events", json={"user_id": "nope"}, headers=bearer(READ)).status_code == 403


def test_open_routes_need_no_token_even_with_a_read_token(guarded):
    for path in ("/health", "/ready", "/model", "/metrics", "/docs", "/openapi.json"):
        assert guarded.get(path).status_code == 200, path


def test_the_openapi_schema_documents_the_bearer_scheme_on_every_guarded_route(guarded):
    schema = guarded.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    guarded_ops = {(method.upper(), path): op for path, ops in schema["paths"].items() for method, op in ops.items()}
    for key in [("POST", "/predict"), ("POST", "/predict/batch"), ("GET", "/features/{user_id}")]:
        assert guarded_ops[key]["security"] == [{"HTTPBearer": []}] and "401" in guarded_ops[key]["responses"]
    for key in [("POST", "/events"), ("POST", "/admin/model/reload")]:
        assert {"401", "403"} <= set(guarded_ops[key]["responses"]) and guarded_ops[key]["security"]
    for key in [("GET", "/health"), ("GET", "/ready"), ("GET", "/model"), ("GET", "/metrics")]:
        assert "security" not in guarded_ops[key]


# ---------------------------------------------------------------------------------------
# the commands
# ---------------------------------------------------------------------------------------
def test_serve_on_an_external_database_without_a_token_exits_with_one_clear_line(tmp_path):
    settings = make_settings(tmp_path / "home", database_url=EXTERNAL)
    proc = run_cli(settings, "serve", "--port", "1", check=False, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.startswith("error: STREAMFLOW_API_TOKEN is not set")
    error, _, hint = " ".join(proc.stderr.split()).partition(" next: ")  # one message, one next step (wrapped)
    assert "external database (STREAMFLOW_DATABASE_URL)" in error and hint.startswith("set STREAMFLOW_API_TOKEN")


def test_stack_env_shows_the_generated_admin_token_only_with_show_secrets(tmp_path):
    settings = make_settings(tmp_path / "home")
    masked = run_cli(settings, "stack", "env").stdout
    assert "export STREAMFLOW_API_TOKEN='***'" in masked.splitlines()
    token = api_token_file(settings).read_text()
    assert token not in masked
    assert f"export STREAMFLOW_API_TOKEN='{token}'" in run_cli(settings, "stack", "env", "--show-secrets").stdout


def test_stack_env_prints_a_set_admin_token_and_writes_no_file(tmp_path):
    settings = make_settings(tmp_path / "home", api_token=ADMIN)
    shown = run_cli(settings, "stack", "env", "--show-secrets").stdout
    assert f"export STREAMFLOW_API_TOKEN='{ADMIN}'" in shown.splitlines() and not api_token_file(settings).exists()
