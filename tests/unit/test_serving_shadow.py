"""The shadow scorer's queue and batching, and the API with a shadow over loopback (local collaborators): answers
stay the champion's, a full queue drops and counts without failing a request, rows carry the shadow's own
probability for the vector served. The same on PostgreSQL, Feast and MLflow: tests/integration/test_shadow.py."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, date, datetime

import httpx
import pytest

from serving.app import create_app
from serving.model import ModelHolder
from serving.shadow import (
    GIVE_WAY_SECONDS,
    YIELD_ROWS,
    Served,
    ShadowQueue,
    ShadowScorer,
    shadow_from_settings,
    shadow_rows,
)
from streamflow.core.runlog import OpsState
from streamflow.core.settings import Settings
from tests.serving_support import CLOCK, LocalModels, MemoryFeatures, serve_in_thread, serving_model, user_values

TOKEN = "unit-test-token"
USERS = [f"{1000 + i}-AAAAA" for i in range(40)]
MONTH = CLOCK.date()


def served(user: str, i: int = 0, probability: float = 0.5, as_of: date = MONTH) -> Served:
    return Served(user, as_of, user_values(i), "1", probability)


class Table:
    """What the writer was given, row by row; ``gate`` holds writes until set (a stalled database)."""

    def __init__(self):
        self.rows: list[tuple] = []
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: Exception | None = None

    def __call__(self, rows) -> None:
        self.gate.wait(timeout=30)
        if self.fail is not None:
            raise self.fail
        self.batches.append(len(rows))
        self.rows.extend(rows)


def shadow_holder(version: str | None = "2") -> tuple[LocalModels, ModelHolder]:
    registry = LocalModels({"2": serving_model("2", family="logistic_regression", seed=3)}, alias=version)
    holder = ModelHolder(registry, poll_seconds=3600, clear_when_absent=True)
    holder.poll()
    return registry, holder


# ---------------------------------------------------------------------------------------
# the queue and the batches
# ---------------------------------------------------------------------------------------
def test_the_queue_refuses_when_full_and_never_waits():
    q = ShadowQueue(3)
    started = time.perf_counter()
    accepted = [q.offer(served(u)) for u in USERS[:5]]
    assert time.perf_counter() - started < 0.05
    assert accepted == [True, True, True, False, False] and len(q) == 3


def test_take_returns_a_full_batch_at_once_and_a_partial_one_after_the_fill_wait():
    q = ShadowQueue(100)
    for u in USERS[:7]:
        q.offer(served(u))
    started = time.perf_counter()
    assert [s.user_id for s in q.take(5, 1.0, 10.0)] == USERS[:5]  # full: no waiting for the fill time
    assert time.perf_counter() - started < 1.0
    started = time.perf_counter()
    assert [s.user_id for s in q.take(5, 1.0, 0.2)] == USERS[5:7]  # partial: after the fill wait
    assert 0.15 < time.perf_counter() - started < 2.0
    assert q.take(5, 0.05, 0.05) == [] and q.take(5, 0, 0) == []


def test_rows_are_scored_by_the_shadow_and_deduplicated_per_month_and_user_the_last_one_winning():
    _registry, holder = shadow_holder()
    model = holder.current
    batch = [served(USERS[0], 0, 0.1), served(USERS[1], 1, 0.2), served(USERS[0], 2, 0.3)]
    batch.append(served(USERS[0], 0, 0.4, as_of=date(2024, 2, 29)))  # another month: a row of its own
    at = datetime(2024, 4, 1, tzinfo=UTC)
    rows = shadow_rows(batch, model, at)
    assert len(rows) == 3
    by_key = {(r[1], r[0]): r for r in rows}
    last = by_key[(MONTH, USERS[0])]
    assert last == (USERS[0], MONTH, 1, 0.3, 2, pytest.approx(float(model.proba([user_values(2)])[0])), "api", at)
    assert by_key[(MONTH, USERS[1])][5] == pytest.approx(float(model.proba([user_values(1)])[0]), abs=1e-15)


def test_a_batch_longer_than_a_chunk_is_scored_in_chunks_exactly_as_in_one_call():
    _registry, holder = shadow_holder()
    model = holder.current
    batch = [served(f"{2000 + i}-BBBBB", i) for i in range(3 * YIELD_ROWS + 5)]
    rows = shadow_rows(batch, model, datetime(2024, 4, 1, tzinfo=UTC))
    whole = model.proba([s.values for s in batch])
    assert [r[0] for r in rows] == [s.user_id for s in batch]
    assert [r[5] for r in rows] == pytest.approx([float(p) for p in whole], rel=1e-12, abs=1e-15)


def test_the_shadow_waits_between_chunks_while_requests_are_in_progress_but_never_for_ever():
    _registry, holder = shadow_holder()
    table = Table()
    scorer = ShadowScorer(holder, table, queue_size=100, batch_size=100, flush_seconds=0.1)
    batch = [served(f"{3000 + i}-CCCCC", i) for i in range(3 * YIELD_ROWS)]
    started = time.perf_counter()
    assert scorer.flush(batch) == len(batch)
    idle = time.perf_counter() - started
    in_progress = threading.Event()  # never set: a request always in progress, each chunk and the write wait
    scorer.wait_idle = in_progress.wait
    started = time.perf_counter()
    assert scorer.flush(batch) == len(batch)
    waited = time.perf_counter() - started
    assert waited >= 3 * GIVE_WAY_SECONDS > idle
    assert len(table.rows) == 2 * len(batch)


def test_the_worker_writes_batches_of_at_most_the_batch_size_and_counts_failures():
    _registry, holder = shadow_holder()
    table = Table()
    scorer = ShadowScorer(holder, table, queue_size=100, batch_size=4, flush_seconds=0.05)
    for i, u in enumerate(USERS[:10]):
        scorer.queue.offer(served(u, i))
    scorer.start()
    try:
        deadline = time.monotonic() + 10
        while scorer.written < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert scorer.written == 10 and max(table.batches) <= 4 and sum(table.batches) == 10
        table.fail = RuntimeError("the database is away")
        for u in USERS[10:13]:
            scorer.queue.offer(served(u))
        deadline = time.monotonic() + 10
        while scorer.failed < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert scorer.failed == 3 and scorer.written == 10
    finally:
        scorer.stop()


def test_stop_writes_what_is_queued_and_no_shadow_queues_nothing():
    registry, holder = shadow_holder()
    table = Table()
    scorer = ShadowScorer(holder, table, queue_size=100, batch_size=100, flush_seconds=5)
    scorer.start()
    for u in USERS[:5]:
        scorer.queue.offer(served(u))
    scorer.stop()
    assert len(table.rows) == 5
    registry.version = None  # the alias is removed: the shadow is no longer scored
    assert holder.poll() and holder.current is None
    features = MemoryFeatures()
    features.add(USERS[0], user_values(0))
    (row,), _catalog = features.read([USERS[0]], features.model_service)
    scorer.offer(row, "1", 0.5)
    assert len(scorer.queue) == 0 and scorer.dropped == 0


def test_the_setting_off_builds_no_shadow_scorer():
    assert shadow_from_settings(Settings(_env_file=None, shadow=False)) is None
    assert Settings.model_fields["shadow"].default is True
    assert Settings(_env_file=None, shadow="off").shadow is False  # STREAMFLOW_SHADOW=on|off


# ---------------------------------------------------------------------------------------
# the API with a shadow, over HTTP
# ---------------------------------------------------------------------------------------
def metric(text: str, name: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


@pytest.mark.parametrize("on_loop", [False, True], ids=["read in the worker thread", "read on the event loop"])
def test_a_full_queue_drops_and_counts_while_every_answer_is_the_champions(on_loop):
    features = MemoryFeatures()
    features.on_loop = on_loop
    for i, u in enumerate(USERS):
        features.add(u, user_values(i))
    champion = ModelHolder(LocalModels({"1": serving_model("1")}, alias="1"), poll_seconds=3600)
    _registry, holder = shadow_holder()
    table = Table()
    table.gate.clear()  # the database stalls: the worker holds its first batch
    scorer = ShadowScorer(holder, table, queue_size=5, batch_size=1, flush_seconds=0.01)
    settings = Settings(_env_file=None, api_token=TOKEN)
    ops = OpsState({}, None, None)
    app = create_app(settings, features, champion, shadow=scorer, ops_state=lambda: ops)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as api:
        assert api.get("/model").json()["shadow"]["version"] == "2"
        assert api.get("/ready").json()["shadow_version"] == "2"
        answers = [api.post("/predict", json={"user_id": u}) for u in USERS]
        assert {r.status_code for r in answers} == {200}
        for i, r in enumerate(answers):
            body = r.json()
            assert body["model_version"] == "1"
            assert body["churn_probability"] == pytest.approx(champion.current.proba([user_values(i)])[0], abs=1e-12)
        batch = api.post("/predict/batch", json={"user_ids": USERS[:10]})
        assert batch.status_code == 200 and batch.json()["model_version"] == "1"
        assert scorer.dropped >= len(USERS) + 10 - 6  # 5 queued, at most one held by the worker
        text = api.get("/metrics").text
        assert metric(text, "streamflow_shadow_dropped_total") == scorer.dropped
        assert metric(text, "streamflow_shadow_version") == 2
        table.gate.set()  # the database answers again: what was queued is written
        deadline = time.monotonic() + 10
        while scorer.written + scorer.dropped < len(USERS) + 10 and time.monotonic() < deadline:
            time.sleep(0.02)
    shadow = holder.current
    assert scorer.written == len(table.rows) and 1 <= len(table.rows) <= 6
    for user, as_of, champion_version, champion_p, version, p, source, _at in table.rows:
        i = USERS.index(user)
        assert (as_of, champion_version, version, source) == (MONTH, 1, 2, "api")
        assert champion_p == pytest.approx(float(champion.current.proba([user_values(i)])[0]), abs=1e-12)
        assert p == pytest.approx(float(shadow.proba([user_values(i)])[0]), abs=1e-12)


@pytest.mark.parametrize("on_loop", [True, False], ids=["read on the event loop", "read in the worker thread"])
def test_a_request_is_in_progress_from_its_start_until_its_answer_is_sent(on_loop):
    """The shadow scores only while no request is in progress: the app counts one until its last byte is handed to
    the server, wherever its read ran."""
    features = MemoryFeatures()
    features.on_loop = on_loop
    features.add(USERS[0], user_values(0))
    champion = ModelHolder(LocalModels({"1": serving_model("1")}, alias="1"), poll_seconds=3600)
    ops = OpsState({}, None, None)
    app = create_app(Settings(_env_file=None, api_token=TOKEN), features, champion, ops_state=lambda: ops)
    state = app.state.serving
    seen = []
    body = json.dumps({"user_id": USERS[0]}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        seen.append((message["type"], message.get("status"), state.in_flight, state.idle.is_set()))

    async def one_request():
        async with app.router.lifespan_context(app):  # loads the champion
            assert (state.in_flight, state.idle.is_set()) == (0, True)
            await app(scope, receive, send)
            seen.append(("answered", None, state.in_flight, state.idle.is_set()))

    asyncio.run(one_request())
    assert seen == [
        ("http.response.start", 200, 1, False),
        ("http.response.body", None, 1, False),
        ("answered", None, 0, True),
    ]
    assert features.reads == 1
