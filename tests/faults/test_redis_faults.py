"""The API on a Redis online store (as in the compose stack) while Redis stops under load and comes back: 503 with
Retry-After meanwhile, then 200 again from the same process, with the same answers as before; and while a month
is rewritten under load: no active user goes without features."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from streamflow.core.names import FEATURE_MARTS
from streamflow.features import materialize
from streamflow.features.online import online_read
from tests.conftest import server_home
from tests.faults.conftest import ClientLoop, wait_for
from tests.serving_world import MAR, api_server, build_world, users_by_history, write_old_values

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def redis_world(built_warehouse, redis_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("redis_world")
    with server_home("streamflow-redis-faults-") as home:
        settings = build_world(home, built_warehouse, tmp, online_store="redis", redis_url=redis_server.url)
        active, _leavers = users_by_history(settings)
        log = tmp / "api.log"
        with api_server(settings, log) as (url, proc):
            yield settings, url, proc, active


def test_redis_stopped_under_load_is_503_with_retry_after_then_200_again_without_a_restart(redis_world, redis_server):
    settings, url, proc, active = redis_world
    assert settings.online_store == "redis"
    users = active[:10]
    with ClientLoop(url, "/predict", [{"user_id": u} for u in users], limit=180) as loop:
        wait_for(loop, lambda a: a.status == 200, 30, "200 before Redis stops")
        redis_server.stop()
        stopped = time.monotonic()
        wait_for(loop, lambda a: a.status == 503, 30, "503 while Redis is down")
        time.sleep(2)
        redis_server.start()
        back = wait_for(loop, lambda a: a.status == 200, 60, "200 after Redis came back")
        time.sleep(2)
    answers = loop.answers
    assert {a.status for a in answers} == {200, 503}, {a.status for a in answers}
    refused = [a for a in answers if a.status == 503]
    assert refused and all(a.retry_after == "5" and a.body["store"] == "online" for a in refused)
    assert all(a.status == 200 for a in loop.since(back))
    assert all(a.status == 200 for a in answers if a.at < stopped - 0.5)
    assert max(a.seconds for a in answers) < settings.online_timeout_seconds + 1.5
    # the same probabilities before and after: the values came back with Redis
    before = {a.body["user_id"]: a.body["churn_probability"] for a in answers if a.status == 200 and a.at < stopped}
    after = {a.body["user_id"]: a.body["churn_probability"] for a in loop.since(back)}
    assert before and after and all(before[u] == p for u, p in after.items() if u in before)
    assert proc.poll() is None  # the same API process all along


def test_a_forced_rewrite_on_redis_replaces_values_without_leaving_an_active_user_without_features(redis_world):
    settings, url, proc, active = redis_world
    mar = datetime(2024, 3, 31, tzinfo=UTC)
    later = datetime(2024, 4, 30, tzinfo=UTC)
    # values dated after the month served (as a month the history no longer has leaves them): Feast's Redis
    # writer keeps a value only when it is newer, so a rewrite must replace them explicitly
    dated = active[0]
    write_old_values(settings, dated, MAR, dated=later)
    assert mart_as_of(online_read(settings, [dated])[0]) == {later}

    readers = active[1:21]
    with ClientLoop(url, "/predict", [{"user_id": u} for u in readers], limit=300, pause=0.005) as loop:
        wait_for(loop, lambda a: a.status == 200, 30, "200 before the rewrite")
        started = time.monotonic()
        result = materialize.materialize(settings, MAR, force=True)
        ended = time.monotonic()
        time.sleep(1)
    during = [a for a in loop.answers if started <= a.at <= ended]
    assert len(during) > 5, "the client loop must call /predict while the views are rewritten"
    assert {a.status for a in loop.answers} == {200}, sorted({(a.status, str(a.body)[:120]) for a in loop.answers})
    assert set(result.written) == set(FEATURE_MARTS) and all(result.written.values())
    assert mart_as_of(online_read(settings, [dated])[0]) == {mar}
    assert all(mart_as_of(row) == {mar} for row in online_read(settings, readers))
    assert proc.poll() is None


def mart_as_of(row) -> set[datetime]:
    """The event times of a user's month-end values online (the pushed view aside)."""
    return {ts for view, ts in row.as_of.items() if view in FEATURE_MARTS}
