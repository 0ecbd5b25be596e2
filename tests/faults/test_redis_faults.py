"""The API on a Redis online store (as in the compose stack) while Redis stops under load and comes back: 503 with
Retry-After meanwhile, then 200 again from the same process, with the same answers as before."""

from __future__ import annotations

import time

import pytest

from tests.conftest import server_home
from tests.faults.conftest import ClientLoop, wait_for
from tests.serving_world import api_server, build_world, users_by_history

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
