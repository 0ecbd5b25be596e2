"""The shadow challenger on the real stack: `streamflow serve` (the API's own PostgreSQL role) answers with the
champion while a challenger that was not promoted is scored off the request path into ml.shadow_scores;
a stalled table fills the queue, which drops and counts without failing a request; STREAMFLOW_SHADOW=off writes
nothing; `streamflow score` writes the shadow's batch rows for every active user in the champion's transaction."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pandas as pd
import pytest

from ml.dataset import FeastSource
from ml.score import read_scores, score
from ml.tracking import load_version, set_shadow
from ml.train import train
from serving.app import create_app
from serving.model import MlflowModelSource, ModelHolder
from serving.shadow import shadow_from_settings
from streamflow.core.db import connect, with_role
from streamflow.core.names import SHADOW_SCORES
from streamflow.features.online import OnlineReader
from tests.conftest import run_cli, server_home
from tests.integration.test_model_format import log_version
from tests.serving_support import serve_in_thread
from tests.serving_world import FEB, MAR, api_server, clone_world, users_by_history

pytestmark = pytest.mark.integration

REQUESTS = 300


@pytest.fixture(scope="module")
def shadow_world(world_template, tmp_path_factory):
    """A platform whose champion is v1 (trained at March) and whose challenger v2 (trained at February) was not
    promoted: v2 is the shadow. ``expected``: version -> user -> probability on the users' online features."""
    tmp = tmp_path_factory.mktemp("shadow_world")
    with server_home("streamflow-shadow-") as home:
        settings = clone_world(world_template, home, shadow_flush_seconds=0.2)
        train(settings, FEB)
        active, _leavers = users_by_history(settings)
        users = active[:100]
        frame = FeastSource(settings).feature_frame(MAR).set_index("user_id").loc[users]  # what is online at March
        expected = {}
        for version in ("1", "2"):
            model = load_version(settings, version)
            expected[version] = dict(zip(users, (float(p) for p in model.predict_proba(frame)), strict=True))
        assert any(abs(expected["1"][u] - expected["2"][u]) > 1e-6 for u in users)  # told apart
        yield settings, users, expected, tmp


def shadow_rows(settings, source: str) -> pd.DataFrame:
    with connect(settings) as conn:
        cur = conn.execute(f"select * from {SHADOW_SCORES} where source = %s order by user_id", (source,))
        return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])


def clear_api_rows(settings) -> None:
    with connect(settings) as conn:
        conn.execute(f"delete from {SHADOW_SCORES} where source = 'api'")
        conn.commit()


def wait_rows(settings, count: int, timeout: float = 30) -> pd.DataFrame:
    deadline = time.monotonic() + timeout
    while True:
        rows = shadow_rows(settings, "api")
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def metric(text: str, name: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


def test_under_load_every_answer_is_the_champions_and_the_shadow_fills_its_table(shadow_world):
    settings, users, expected, tmp = shadow_world
    clear_api_rows(settings)
    with api_server(settings, tmp / "api.log") as (url, _proc), httpx.Client(base_url=url, timeout=30) as api:
        model = api.get("/model").json()
        assert model["version"] == "1" and model["shadow"]["version"] == "2"
        assert model["shadow"]["alias"] == "challenger" and api.get("/ready").json()["shadow_version"] == "2"
        bodies = [{"user_id": users[i % len(users)]} for i in range(REQUESTS)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: api.post("/predict", json=b), bodies))
        batch = api.post("/predict/batch", json={"user_ids": users[:50]})
        assert batch.status_code == 200 and batch.json()["model_version"] == "1"
        assert {r.status_code for r in answers} == {200}
        for r in answers:
            body = r.json()
            assert body["model_version"] == "1"
            assert body["churn_probability"] == pytest.approx(expected["1"][body["user_id"]], abs=1e-9)
        rows = wait_rows(settings, len(users))
        text = api.get("/metrics").text
    assert len(rows) == len(users) and list(rows["user_id"]) == sorted(users)
    assert set(rows["as_of"]) == {MAR} and set(rows["champion_version"]) == {1} and set(rows["shadow_version"]) == {2}
    for rec in rows.itertuples():
        assert rec.champion_probability == pytest.approx(expected["1"][rec.user_id], abs=1e-9)
        assert rec.shadow_probability == pytest.approx(expected["2"][rec.user_id], abs=1e-9)
    assert metric(text, "streamflow_shadow_rows_total") >= len(users)
    assert metric(text, "streamflow_shadow_dropped_total") == 0 and metric(text, "streamflow_shadow_failed_total") == 0


def test_a_stalled_table_fills_the_queue_which_drops_and_counts_and_no_request_fails(shadow_world):
    settings, users, expected, _tmp = shadow_world
    clear_api_rows(settings)
    api_settings = with_role(settings, "api").model_copy(update={"shadow_queue_size": 3, "shadow_batch_size": 1})
    shadow = shadow_from_settings(api_settings)
    models = ModelHolder(MlflowModelSource(api_settings), api_settings.model_poll_seconds)
    app = create_app(api_settings, OnlineReader(api_settings), models, shadow=shadow)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as api, connect(settings) as lock:
        lock.execute(f"lock table {SHADOW_SCORES} in access exclusive mode")  # the writer waits on it
        answers = [api.post("/predict", json={"user_id": u}) for u in users[:30]]
        assert {r.status_code for r in answers} == {200}
        for r, u in zip(answers, users[:30], strict=True):
            assert r.json()["churn_probability"] == pytest.approx(expected["1"][u], abs=1e-9)
        dropped = metric(api.get("/metrics").text, "streamflow_shadow_dropped_total")
        assert dropped >= 30 - 4 and dropped == shadow.dropped  # 3 queued, at most one held by the writer
        lock.rollback()  # the table answers again: what was queued is written
        rows = wait_rows(settings, 30 - dropped)
    assert len(rows) == 30 - dropped and set(rows["shadow_version"]) == {2}


def test_with_the_setting_off_nothing_is_written(shadow_world):
    settings, users, _expected, tmp = shadow_world
    clear_api_rows(settings)
    off = settings.model_copy(update={"shadow": False})
    with api_server(off, tmp / "api-off.log") as (url, _proc), httpx.Client(base_url=url, timeout=30) as api:
        assert api.get("/model").json()["shadow"] is None
        assert all(api.post("/predict", json={"user_id": u}).status_code == 200 for u in users[:40])
        time.sleep(1.0)  # several flush intervals
        assert metric(api.get("/metrics").text, "streamflow_shadow_rows_total") == 0
    assert shadow_rows(settings, "api").empty


def test_batch_scoring_writes_the_shadows_probability_for_every_active_user(shadow_world):
    settings, _users, _expected, _tmp = shadow_world
    result = score(settings, MAR)
    assert result.shadow_version == "2" and result.shadow_rows == result.rows
    champion = read_scores(settings, MAR)
    rows = shadow_rows(settings, "batch")
    assert list(rows["user_id"]) == list(champion["user_id"]) and len(rows) == result.rows
    frame = FeastSource(settings).feature_frame(MAR).sort_values("user_id").reset_index(drop=True)
    shadow = load_version(settings, "2").predict_proba(frame)
    assert rows["shadow_probability"].to_numpy() == pytest.approx(shadow, abs=1e-12)
    assert rows["champion_probability"].to_numpy() == pytest.approx(champion["churn_probability"].to_numpy())
    assert set(rows["as_of"]) == {MAR} and set(rows["shadow_version"]) == {2} and set(rows["champion_version"]) == {1}
    # the alias shadow wins over the challenger; scoring again replaces that version's batch rows
    proc = run_cli(settings, "model", "shadow", "1")
    assert "shadow: v1" in proc.stdout, proc.stdout
    try:
        again = score(settings, MAR)
        assert again.shadow_version == "1"
        versions = shadow_rows(settings, "batch").groupby("shadow_version").size().to_dict()
        assert versions == {1: result.rows, 2: result.rows}
    finally:
        set_shadow(settings, None)
    assert score(settings, MAR).shadow_version == "2"
    assert len(shadow_rows(settings, "batch")) == 2 * result.rows


def test_a_shadow_that_cannot_be_loaded_leaves_the_champions_batch_scores_written(shadow_world):
    settings, _users, _expected, tmp = shadow_world
    before = shadow_rows(settings, "batch")
    set_shadow(settings, log_version(settings, tmp, "pickle"))  # refused by the safe loader
    try:
        result = score(settings, MAR)
    finally:
        set_shadow(settings, None)
    assert result.shadow_version is None and "stored as pickle" in (result.shadow_error or ""), result.shadow_error
    assert result.rows == len(read_scores(settings, MAR)) > 0
    assert len(shadow_rows(settings, "batch")) == len(before)
