"""Two API workers under a constant client loop while the champion alias moves between two registered versions
every few seconds: no 5xx, and every answer's probability is the one the version it names gives that user."""

from __future__ import annotations

import threading
import time

import httpx
import pandas as pd
import pytest

from ml.tracking import configure, load_version
from ml.train import train
from streamflow.features.online import online_read
from tests.conftest import server_home
from tests.faults.conftest import ClientLoop
from tests.serving_world import FEB, api_server, clone_world, users_by_history

pytestmark = pytest.mark.faults

SWAP_EVERY = 3.0  # seconds between alias moves
SWAPS = 8


@pytest.fixture(scope="module")
def swap_world(world_template, tmp_path_factory):
    """A platform whose model ``streamflow_churn_swap`` has versions 1 (trained at March) and 2 (at February)."""
    tmp = tmp_path_factory.mktemp("swap_world")
    with server_home("streamflow-swap-faults-") as home:
        base = clone_world(world_template, home)
        train(base, FEB)
        settings = base.model_copy(update={"model_name": "streamflow_churn_swap"})
        client = configure(base)
        for version in ("1", "2"):
            client.copy_model_version(f"models:/{base.model_name}/{version}", settings.model_name)
        client.set_registered_model_alias(settings.model_name, "champion", "1")
        active, _leavers = users_by_history(settings)
        yield settings, client, active[40:60], tmp


def expected_probabilities(settings, users: list[str]) -> dict[str, dict[str, float]]:
    """version -> user -> probability, from each registered pipeline on the users' online features."""
    rows = online_read(settings, users, "churn_model_v1")
    out = {}
    for version in ("1", "2"):
        model = load_version(settings, version)
        frame = pd.DataFrame([{f: row.values[f] for f in model.features} for row in rows])
        out[version] = dict(zip(users, (float(p) for p in model.predict_proba(frame)), strict=True))
    return out


def test_two_workers_under_load_with_champion_swaps_answer_every_request_with_the_named_versions_probability(
    swap_world,
):
    settings, client, users, tmp = swap_world
    expected = expected_probabilities(settings, users)
    assert any(abs(expected["1"][u] - expected["2"][u]) > 1e-6 for u in users)  # the versions are told apart
    log = tmp / "api.log"
    with api_server(settings, log, "--workers", "2") as (url, proc):
        with httpx.Client(base_url=url, timeout=10) as api:
            assert api.post("/predict", json={"user_id": users[0]}).json()["model_version"] == "1"
        moves: list[tuple[float, str]] = []

        def swap():
            for i in range(SWAPS):
                time.sleep(SWAP_EVERY)
                version = "2" if i % 2 == 0 else "1"
                client.set_registered_model_alias(settings.model_name, "champion", version)
                moves.append((time.monotonic(), version))

        swapper = threading.Thread(target=swap, name="alias-swapper")
        with ClientLoop(url, "/predict", [{"user_id": u} for u in users], limit=120, pause=0.005) as loop:
            swapper.start()
            swapper.join(timeout=SWAP_EVERY * SWAPS + 60)
            time.sleep(3 * SWAP_EVERY)  # a poll and a load after the last move
        assert proc.poll() is None
    answers = loop.answers
    assert len(moves) == SWAPS and len(answers) > 200, (len(moves), len(answers))
    assert {a.status for a in answers} == {200}, sorted({a.status for a in answers})
    wrong = [
        (a.body["user_id"], a.body["model_version"], a.body["churn_probability"])
        for a in answers
        if a.body["churn_probability"] != pytest.approx(expected[a.body["model_version"]][a.body["user_id"]], abs=1e-9)
    ]
    assert not wrong, wrong[:10]
    # both versions answered, and after each move the workers followed it
    versions = [a.body["model_version"] for a in answers]
    assert versions.count("1") > 20 and versions.count("2") > 20
    last_move, last_version = moves[-1]
    assert {a.body["model_version"] for a in loop.since(last_move + 2 * SWAP_EVERY)} == {last_version}
