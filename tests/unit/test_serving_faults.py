"""The API under faults, over loopback with local collaborators: a stalled store never stalls the event loop, a
champion that cannot serve never replaces the serving one, bodies over the limit are refused while they stream,
and event times beyond the business clock are 422.

The same on the real PostgreSQL, Redis, Feast and MLflow is in tests/faults/.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace

import httpx
import pytest

from serving.app import create_app
from serving.model import ModelHolder
from serving.validation import MAX_BODY_BYTES
from streamflow.core.runlog import OpsState
from streamflow.core.settings import Settings
from tests.serving_support import LocalModels, MemoryFeatures, serve_in_thread, serving_model, user_values

KNOWN = "1111-AAAAA"
TIMEOUT = 0.5  # the online timeout of these apps: a route's deadline is this plus half a second
TOKEN = "faults-unit-token"


def ops_state() -> OpsState:
    return OpsState({}, None, None)


class SlowFeatures(MemoryFeatures):
    """Reads and pings that take ``delay`` seconds (a stalled store), blocking the calling thread."""

    def __init__(self):
        super().__init__()
        self.delay = 0.0

    def read(self, user_ids, service):
        time.sleep(self.delay)
        return super().read(user_ids, service)

    def ping(self) -> bool:
        time.sleep(self.delay)
        return super().ping()


class FlakyModels(LocalModels):
    """A registry whose versions in ``broken`` fail to load."""

    def __init__(self, models, alias):
        super().__init__(models, alias)
        self.broken: set[str] = set()

    def load(self, ref):
        if ref.version in self.broken:
            raise OSError(f"artifact of version {ref.version} is unreadable")
        return super().load(ref)


@pytest.fixture()
def world():
    features = SlowFeatures()
    features.add(KNOWN, user_values(0))
    v1 = serving_model("1")
    ghost = replace(serving_model("3", seed=3), features=[*v1.features, "ghost_feature"])
    registry = FlakyModels({"1": v1, "2": serving_model("2", seed=1), "3": ghost}, alias="1")
    models = ModelHolder(registry, poll_seconds=3600, retry_failed_seconds=3600)
    settings = Settings(_env_file=None, api_token=TOKEN, online_timeout_seconds=TIMEOUT)
    models.poll()
    app = create_app(settings, features, models, ops_state=ops_state)
    auth = {"Authorization": f"Bearer {TOKEN}"}  # the admin token grants every route
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30, headers=auth) as client:
        yield client, features, registry, models, url


def failures(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("streamflow_model_load_failures_total "):
            return float(line.split()[1])
    raise AssertionError("streamflow_model_load_failures_total is not exported")


# ---------------------------------------------------------------------------------------
# a stalled store
# ---------------------------------------------------------------------------------------
def test_a_stalled_store_never_stalls_health_and_predictions_answer_503_at_the_deadline(world):
    client, features, _registry, _models, url = world
    assert client.post("/predict", json={"user_id": KNOWN}).status_code == 200
    features.delay = 5.0
    answers: list[tuple[int, float, str]] = []

    def predict():
        with httpx.Client(base_url=url, timeout=30) as own:
            started = time.monotonic()
            r = own.post("/predict", json={"user_id": KNOWN})
            answers.append((r.status_code, time.monotonic() - started, r.headers.get("retry-after", "")))

    threads = [threading.Thread(target=predict) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # the reads are in flight
    health = []
    for _ in range(10):
        started = time.monotonic()
        assert client.get("/health").status_code == 200
        health.append(time.monotonic() - started)
    ready_started = time.monotonic()
    ready = client.get("/ready")
    ready_seconds = time.monotonic() - ready_started
    for t in threads:
        t.join(timeout=30)
    features.delay = 0.0
    assert max(health) < 0.25, health
    assert [(s, r) for s, _t, r in answers] == [(503, "5")] * 4, answers
    assert all(seconds < TIMEOUT + 1.5 for _s, seconds, _r in answers), answers  # the deadline, not the 5 s read
    assert ready.status_code == 503 and ready.json()["online_store"] is False and ready_seconds < TIMEOUT + 1.5
    assert "did not answer within" in ready.json()["detail"]["online_store"]
    time.sleep(5)  # the abandoned reads finish; the service answers again
    assert client.post("/predict", json={"user_id": KNOWN}).status_code == 200


# ---------------------------------------------------------------------------------------
# champions that cannot serve
# ---------------------------------------------------------------------------------------
def test_a_champion_that_fails_to_load_leaves_the_old_model_serving_and_says_so(world):
    client, _features, registry, models, _url = world
    before = client.post("/predict", json={"user_id": KNOWN}).json()
    assert failures(client) == 0 and client.get("/ready").json()["model_load_failure"] is None
    registry.broken.add("2")
    registry.version = "2"
    assert models.poll() is False
    r = client.post("/predict", json={"user_id": KNOWN})
    assert r.status_code == 200 and r.json() == before  # v1 keeps serving
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["model_version"] == "1" and body["model_load_failure"]["version"] == "2"
    assert "artifact of version 2 is unreadable" in body["model_load_failure"]["reason"]
    assert "v2 was not loaded" in body["detail"]["model"] and "v1 keeps serving" in body["detail"]["model"]
    assert failures(client) == 1
    assert models.poll() is False and failures(client) == 1  # not retried before retry_failed_seconds
    # the alias back on the serving version clears it; a loadable version then swaps in
    registry.version = "1"
    models.poll()
    assert client.get("/ready").json()["model_load_failure"] is None
    registry.broken.clear()
    registry.version = "2"
    assert models.poll() is True
    assert client.post("/predict", json={"user_id": KNOWN}).json()["model_version"] == "2"


def test_a_champion_needing_features_the_service_does_not_serve_is_refused_and_the_old_one_serves(world):
    client, _features, registry, models, _url = world
    registry.version = "3"
    assert models.poll() is False
    assert models.current.version == "1"
    r = client.post("/predict", json={"user_id": KNOWN})
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    failure = client.get("/ready").json()["model_load_failure"]
    assert failure["version"] == "3" and "ghost_feature" in failure["reason"] and "does not serve" in failure["reason"]
    assert failures(client) == 1


# ---------------------------------------------------------------------------------------
# bodies and event times
# ---------------------------------------------------------------------------------------
def chunked_post(url: str, path: str, cap: int = 64 * MAX_BODY_BYTES) -> tuple[bytes, int]:
    """POST a chunked body of up to ``cap`` bytes, chunk by chunk, until the server answers; returns the answer's
    first bytes and how many body bytes were sent before it came."""
    host, port = url.removeprefix("http://").split(":")
    chunk = b"[" + b'"1111-AAAAA",' * 5000  # any bytes: the limit is on size, before parsing
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        sent = 0
        sock.setblocking(False)
        while sent < cap:
            try:
                answer = sock.recv(4096)
                if answer:
                    return answer, sent
            except BlockingIOError:
                pass
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                time.sleep(0.01)
                continue
            sent += len(chunk)
        sock.setblocking(True)
        return sock.recv(4096), sent


@pytest.mark.parametrize("path", ["/predict", "/predict/batch", "/events"])
def test_a_chunked_body_over_the_limit_is_413_while_it_streams(world, path):
    _client, _features, _registry, _models, url = world
    answer, sent = chunked_post(url, path)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 16 * MAX_BODY_BYTES, sent  # refused long before the end (socket buffers hold a few MiB)


@pytest.mark.parametrize("path", ["/predict", "/events"])
def test_a_declared_body_over_the_limit_is_413_before_it_is_read(world, path):
    client, _features, _registry, _models, _url = world
    r = client.post(path, content=b" " * (MAX_BODY_BYTES + 1), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]


def test_an_event_time_beyond_the_business_clock_is_422_and_one_in_the_next_month_is_accepted(world):
    client, features, _registry, _models, _url = world
    event = {"user_id": KNOWN, "watch_minutes_today": 10.0, "last_session_at": "2024-04-30T22:00:00Z"}
    assert client.post("/events", json=event).status_code == 200  # the clock is 2024-03-31: April is current
    far = client.post("/events", json={**event, "event_time": "2024-05-02T00:00:01Z"})
    assert far.status_code == 422, far.text
    (error,) = far.json()["detail"]
    assert error["loc"] == ["body", "event_time"] and "beyond the business clock 2024-03-31" in error["msg"]
    late_session = client.post("/events", json={**event, "last_session_at": "2026-11-25T10:00:00Z"})
    assert late_session.status_code == 422 and late_session.json()["detail"][0]["loc"] == ["body", "last_session_at"]
    assert features.rows[KNOWN]["realtime"][1]["watch_minutes_today"] == 10.0  # the refused ones were not pushed
