"""The model registry under faults: `streamflow train` killed between registering its version and moving the
`challenger` alias, `streamflow promote` killed between recording its decision and moving `champion`, then both
run again, end as a clean run does; two `streamflow promote` at once move the champion exactly once.

Real MLflow (PostgreSQL store), real Feast (offline store), real subprocesses stopped at fault points
(streamflow/core/faults.py). Each test uses registered models of its own."""

from __future__ import annotations

import json
from datetime import date

import psycopg
import pytest

from ml.dataset import FeastSource
from ml.promote import promote
from ml.tracking import configure, version_by_alias
from ml.train import train
from streamflow.core.db import connect
from streamflow.core.lock import pipeline_lock
from streamflow.core.names import CHALLENGER, CHAMPION
from streamflow.core.stack import EmbeddedPostgres
from streamflow.features import apply
from tests.conftest import run_cli
from tests.faults.conftest import PausedStep, killed_at
from tests.integration.test_ml_loop import ShuffledLabels

pytestmark = pytest.mark.faults

MAR = date(2024, 3, 31)
VERSION_TAGS = ("as_of", "family", "feature_service", "validation_frame_sha256", "threshold", "roc_auc")


def ml_world(warehouse_copy, mlflow_settings, name: str):
    """A copy of the built warehouse with Feast applied (registry database ``<name>_r``) and the session's MLflow
    store; the registered model is ``name``."""
    settings = warehouse_copy(name)
    with psycopg.connect(EmbeddedPostgres(settings).url("postgres"), autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}_r" with (force)')
        conn.execute(f'create database "{name}_r"')
    settings = settings.model_copy(
        update={
            "feast_project": name,
            "feast_registry_db": f"{name}_r",
            "mlflow_db": mlflow_settings.mlflow_db,
            "mlflow_tracking_uri": None,
            "model_name": name,
            "promotion_min_roc_auc": 0.5,
        }
    )
    apply.apply(settings)
    return settings


def alias(settings, name: str) -> str | None:
    mv = version_by_alias(configure(settings), settings.model_name, name)
    return str(mv.version) if mv is not None else None


def version_tags(settings, version: str, keys) -> dict[str, str]:
    tags = configure(settings).get_model_version(settings.model_name, version).tags
    return {k: v for k, v in tags.items() if k in keys}


def promotion_tags(settings, version: str) -> dict[str, str]:
    tags = configure(settings).get_model_version(settings.model_name, version).tags
    return {k: v for k, v in tags.items() if k.startswith("promotion.")}


def month_states(settings) -> dict[str, dict]:
    with connect(settings) as conn:
        rows = conn.execute("select state, detail from ops.month_log where as_of = %s", (MAR,)).fetchall()
    return dict(rows)


@pytest.fixture(scope="module")
def clean(warehouse_copy, mlflow_settings):
    """The reference: March trained and promoted with nothing killed (version 1, champion)."""
    settings = ml_world(warehouse_copy, mlflow_settings, "faults_ml_clean")
    trained = train(settings, MAR)
    promoted = promote(settings)
    assert trained.model_version == "1" and promoted.champion_after == "1", promoted.as_dict()
    return settings


def test_train_and_promote_killed_before_their_alias_moves_end_as_a_clean_run_on_a_rerun(
    clean, warehouse_copy, mlflow_settings
):
    settings = ml_world(warehouse_copy, mlflow_settings, "faults_ml_kill")

    killed_at(settings, "train.registered", "train", "--as-of", MAR.isoformat())
    with pipeline_lock(settings, "check", wait_seconds=10):  # the killed step's lock went with it
        pass
    assert alias(settings, CHALLENGER) is None  # version 1 registered, never made the challenger
    assert "trained" not in month_states(settings)
    run_cli(settings, "train", "--as-of", MAR.isoformat())
    assert alias(settings, CHALLENGER) == "2" and month_states(settings)["trained"]["model_version"] == "2"
    assert version_tags(settings, "2", VERSION_TAGS) == version_tags(clean, "1", VERSION_TAGS)

    killed_at(settings, "promote.alias", "promote")
    assert alias(settings, CHAMPION) is None  # the decision was recorded, the alias never moved
    run_cli(settings, "promote")
    assert alias(settings, CHAMPION) == alias(settings, CHALLENGER) == "2"
    assert alias(clean, CHAMPION) == alias(clean, CHALLENGER) == "1"
    after, reference = promotion_tags(settings, "2"), promotion_tags(clean, "1")
    assert after.pop("promotion.challenger") == "2" and reference.pop("promotion.challenger") == "1"
    assert after == reference and after["promotion.decision"] == "promote"


def last_json(step: PausedStep) -> dict:
    return json.loads([line for line in step.stdout.splitlines() if line.startswith("{")][-1])


def test_two_promotions_at_once_move_the_champion_exactly_once_and_never_back(clean, warehouse_copy, mlflow_settings):
    settings = ml_world(warehouse_copy, mlflow_settings, "faults_ml_race")
    client = configure(settings)
    weak = train(settings, MAR, source=ShuffledLabels(FeastSource(settings)))  # version 1: signal gone
    client.set_registered_model_alias(settings.model_name, CHAMPION, weak.model_version)
    strong = client.copy_model_version(f"models:/{clean.model_name}/1", settings.model_name)  # version 2
    client.set_registered_model_alias(settings.model_name, CHALLENGER, strong.version)
    assert (weak.model_version, str(strong.version)) == ("1", "2")

    with PausedStep(settings, "promote.alias", "promote", "--json") as first:
        first.wait_paused()  # decided to promote 2 over 1, alias not moved yet, lock held
        with PausedStep(settings, None, "promote", "--json") as second:
            second.wait_for("waiting for the pipeline lock", timeout=120)
            first.resume()
            assert first.finish() == 0, first.describe()
            assert second.finish() == 0, second.describe()
    results = [last_json(first), last_json(second)]

    moves = [r for r in results if r["champion_before"] != r["champion_after"]]
    assert len(moves) == 1 and (moves[0]["champion_before"], moves[0]["champion_after"]) == ("1", "2")
    assert moves[0]["decision"] == "promote"
    assert moves[0]["challenger_scores"]["roc_auc"] > moves[0]["champion_scores"]["roc_auc"]
    other = results[1] if moves[0] is results[0] else results[0]
    assert other["decision"] == "keep" and other["champion_before"] == other["champion_after"] == "2"
    assert alias(settings, CHAMPION) == "2"
    # the version tags tell one promotion: 2 over 1, recorded on both
    for version in ("1", "2"):
        tags = promotion_tags(settings, version)
        assert (tags["promotion.decision"], tags["promotion.challenger"], tags["promotion.champion"]) == (
            "promote",
            "2",
            "1",
        )
