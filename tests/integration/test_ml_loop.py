"""The ML loop on real services: generated drops -> ingest -> dbt -> Feast (offline, point-in-time) ->
training tracked in MLflow (PostgreSQL store) -> promotion gate -> batch scores in the warehouse and
the dbt mart -> drift report -> evaluation against the generator's oracle.

Four generated months with drift injected from month 3: training at month 3 uses the labelled periods
0, 1 (training) and 2 (out-of-time validation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from ml.dataset import FeastSource, frame_digest
from ml.drift import drift
from ml.errors import MLError
from ml.evaluate import evaluate
from ml.promote import promote
from ml.score import read_scores, score, write_scores
from ml.tracking import configure, load_model_alias, version_by_alias
from ml.train import train
from streamflow.core.db import connect
from streamflow.core.runlog import latest_state
from streamflow.core.settings import Settings
from streamflow.drops.generator import params
from streamflow.drops.generator.run import generate
from streamflow.drops.ingest import ingest
from streamflow.features import apply, materialize
from streamflow.warehouse import runner
from streamflow.warehouse.build import build
from tests.conftest import fresh_database, run_cli

pytestmark = pytest.mark.integration

MONTHS, USERS, SEED, DRIFT_AT = 4, 2000, 11, 3


@dataclass
class World:
    settings: Settings
    drops: Path
    months: list[date]


@pytest.fixture(scope="module")
def world(mlflow_settings, tmp_path_factory) -> World:
    """Four drops generated, ingested, built by dbt and registered in Feast, in databases of its own."""
    drops = tmp_path_factory.mktemp("ml_drops")
    generate(drops, MONTHS, USERS, SEED, drift_at=DRIFT_AT)
    fresh_database(mlflow_settings, "ml_feast")
    settings = fresh_database(mlflow_settings, "ml_warehouse").model_copy(update={"feast_registry_db": "ml_feast"})
    ingest(settings, sorted(drops.glob("month_*")))
    build(settings)
    apply.apply(settings)
    return World(settings, drops, [params.as_of(m) for m in range(MONTHS)])


@dataclass
class Trained:
    result: object  # TrainResult
    promotion: object  # PromotionResult


@pytest.fixture(scope="module")
def champion(world) -> Trained:
    """The first training run at month 3, promoted: the module's champion."""
    result = train(world.settings, world.months[3])
    return Trained(result, promote(world.settings))


@dataclass
class ShuffledLabels:
    """The real feature source with the training periods' churn labels permuted (features and rows stay, the
    signal goes); the latest period, the out-of-time validation, keeps its true labels."""

    inner: FeastSource
    seed: int = 0

    @property
    def service(self) -> str:
        return self.inner.service

    def label_periods(self):
        return self.inner.label_periods()

    def model_features(self):
        return self.inner.model_features()

    def feature_frame(self, as_of):
        return self.inner.feature_frame(as_of)

    def training_frame(self, periods):
        frame = self.inner.training_frame(periods)
        training = frame["as_of"].dt.date < max(periods)
        rng = np.random.default_rng(self.seed)
        frame.loc[training, "churn_label"] = rng.permutation(frame.loc[training, "churn_label"].to_numpy())
        return frame


def test_training_logs_metrics_lineage_signature_and_validation_predictions(world, champion):
    s, r = world.settings, champion.result
    client = configure(s)
    run = client.get_run(r.run_id)
    for metric in ("roc_auc", "pr_auc", "log_loss", "brier", "f1", "threshold"):
        assert metric in run.data.metrics
    assert run.data.metrics["roc_auc"] == r.metrics["roc_auc"] > 0.8
    assert {"logistic_regression.roc_auc", "hist_gradient_boosting.roc_auc"} <= set(run.data.metrics)
    assert run.data.params["validation_strategy"] == "out_of_time"
    assert run.data.params["family"] == r.family
    assert run.data.tags["mlflow.source.git.commit"] == r.lineage["git_commit"] != ""

    periods = world.months[:3]
    lineage = json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=r.run_id, artifact_path="lineage.json")).read_text()
    )
    assert lineage["label_periods"] == [p.isoformat() for p in periods]
    assert lineage["validation_periods"] == [world.months[2].isoformat()]
    assert lineage["feature_service"] == "churn_model_v1"
    source = FeastSource(s)
    frame = source.training_frame(periods)
    assert lineage["rows"]["total"] == len(frame) == lineage["rows"]["train"] + lineage["rows"]["validation"]
    assert lineage["training_frame_sha256"] == frame_digest(frame)  # the digest can be re-derived from Feast

    predictions = pd.read_parquet(
        mlflow.artifacts.download_artifacts(run_id=r.run_id, artifact_path="validation/predictions.parquet")
    )
    assert len(predictions) == lineage["rows"]["validation"]
    assert set(predictions["as_of"].dt.date) == {world.months[2]}
    assert {"user_id", "churn_label", "churn_probability", "churn_label_predicted"} <= set(predictions.columns)

    info = mlflow.models.get_model_info(f"models:/{s.model_name}/{r.model_version}")
    assert info.signature.inputs.input_names() == source.model_features()
    assert info.saved_input_example_info is not None
    assert info.metadata["threshold"] == pytest.approx(r.threshold)


def test_the_first_promotion_makes_a_champion_that_loads_and_predicts_by_alias(world, champion):
    s, r, p = world.settings, champion.result, champion.promotion
    assert p.decision.promote and p.champion_before is None and p.champion_after == r.model_version
    assert any("no champion" in reason for reason in p.decision.reasons)
    client = configure(s)
    assert str(version_by_alias(client, s.model_name, "champion").version) == r.model_version

    features = FeastSource(s).feature_frame(world.months[3])
    with pytest.raises(MlflowException, match="MLFLOW_ALLOW_PICKLE_DESERIALIZATION"):
        mlflow.pyfunc.load_model(f"models:/{s.model_name}@champion")  # MLflow's own loader is off in our processes
    model = load_model_alias(s, "champion")  # skops, with the project's trusted types
    proba = np.asarray(model.pipeline.predict_proba(features[FeastSource(s).model_features()]))
    assert proba.shape == (len(features), 2)
    assert np.allclose(proba.sum(axis=1), 1.0) and 0.0 < proba[:, 1].mean() < 1.0
    tags = client.get_model_version(s.model_name, r.model_version).tags
    assert tags["promotion.decision"] == "promote" and "no champion" in tags["promotion.reasons"]

    again = promote(s)  # nothing new to compare: a no-op that keeps the record of the promotion
    assert not again.decision.promote and "already the champion" in again.decision.reasons[0]
    assert client.get_model_version(s.model_name, r.model_version).tags == tags


def test_training_twice_on_the_same_inputs_logs_the_same_metrics(world, champion):
    s, first = world.settings, champion.result
    second = train(s, world.months[3])
    assert second.model_version != first.model_version
    client = configure(s)
    assert client.get_run(second.run_id).data.metrics == client.get_run(first.run_id).data.metrics
    assert second.lineage["training_frame_sha256"] == first.lineage["training_frame_sha256"]
    # an equal challenger is not promoted: equal is within the margin
    decision = promote(s)
    assert not decision.decision.promote and decision.champion_after == first.model_version
    assert any("less than the margin" in reason for reason in decision.decision.reasons)


def test_a_challenger_trained_on_shuffled_labels_is_not_promoted_and_the_reasons_say_why(world, champion):
    s = world.settings
    shuffled = train(s, world.months[3], source=ShuffledLabels(FeastSource(s)))
    assert shuffled.metrics["roc_auc"] < min(s.promotion_min_roc_auc, champion.result.metrics["roc_auc"] - 0.15)
    result = promote(s)
    assert result.challenger_version == shuffled.model_version
    assert not result.decision.promote
    assert result.champion_after == champion.result.model_version
    reasons = " ".join(result.decision.reasons)
    assert "below the floor" in reasons and "less than the margin" in reasons
    # compared on the same rows: the champion scored on the challenger's validation frame
    assert result.champion_scores.roc_auc > 0.8
    client = configure(s)
    for version in (shuffled.model_version, champion.result.model_version):
        tags = client.get_model_version(s.model_name, version).tags
        assert tags["promotion.decision"] == "keep"
        assert tags["promotion.challenger"] == shuffled.model_version
        assert "below the floor" in tags["promotion.reasons"]
    assert str(version_by_alias(client, s.model_name, "champion").version) == champion.result.model_version


def test_model_show_prints_champion_and_challenger_as_one_json_object(world, champion):
    proc = run_cli(world.settings, "model", "show", "--json")
    shown = json.loads(proc.stdout)
    assert shown["model"] == "streamflow_churn"
    assert shown["champion"]["version"] == champion.result.model_version
    assert shown["champion"]["metrics"]["roc_auc"] == pytest.approx(champion.result.metrics["roc_auc"])
    assert shown["champion"]["as_of"] == world.months[3].isoformat()
    assert shown["challenger"]["version"]
    assert "***" in shown["tracking_uri"]  # the database password is never printed


def test_batch_scores_cover_every_active_user_and_agree_with_the_champion(world, champion):
    s, month = world.settings, world.months[3]
    result = score(s, month)
    stored = read_scores(s, month)
    active = materialize.active_users(s, month)
    assert result.rows == len(stored) == len(active)
    assert sorted(stored["user_id"]) == sorted(active)
    assert set(stored["model_version"]) == {int(champion.result.model_version)}

    model = load_model_alias(s, "champion")
    frame = FeastSource(s).feature_frame(month).sort_values("user_id").reset_index(drop=True)
    expected = model.predict_proba(frame)
    np.testing.assert_allclose(stored["churn_probability"].to_numpy(), expected, rtol=0, atol=1e-12)
    assert list(stored["churn_label_predicted"]) == list(expected >= model.threshold)


def test_scoring_a_month_again_replaces_its_rows_and_the_dbt_mart_shows_them(world, champion):
    s, month = world.settings, world.months[3]
    first = score(s, month)
    again = json.loads(run_cli(s, "score", "--as-of", month.isoformat(), "--json").stdout)
    assert again["replaced_rows"] == first.rows == again["rows"]
    assert len(read_scores(s, month)) == again["rows"]

    res = runner.invoke(
        s, ["build", "--select", "churn_predictions", "--vars", json.dumps({"as_of": month.isoformat()})]
    )
    assert res.success, res.exception
    with connect(s) as conn:
        rows, deciles, with_plan = conn.execute(
            "select count(*), count(distinct risk_decile), count(contract_type) from marts.churn_predictions "
            "where as_of = %s",
            (pd.Timestamp(month, tz="UTC"),),
        ).fetchone()
    assert rows == again["rows"] == with_plan  # every score joins to its subscriber's profile
    assert deciles == 10


def test_the_build_creates_the_scores_table_the_scorer_writes_into(world):
    with connect(world.settings) as conn:
        comment = conn.execute("select obj_description('ml.churn_scores'::regclass, 'pg_class')").fetchone()[0]
        (key,) = conn.execute(
            "select pg_get_constraintdef(oid) from pg_constraint "
            "where conrelid = 'ml.churn_scores'::regclass and contype = 'p'"
        ).fetchone()
    assert comment.startswith("Churn probability of every user active at as_of")
    assert key == "PRIMARY KEY (as_of, user_id)"


def test_scoring_before_the_first_build_says_to_run_it_and_creates_nothing(mlflow_settings):
    unbuilt = fresh_database(mlflow_settings, "ml_unbuilt")
    rows = pd.DataFrame(
        {
            "user_id": ["0001-AAAAA"],
            "as_of": [date(2024, 3, 31)],
            "churn_probability": [0.5],
            "churn_label_predicted": [True],
            "model_version": [1],
            "scored_at": [pd.Timestamp.now(tz="UTC")],
        }
    )
    with pytest.raises(MLError, match=r"no ml\.churn_scores table yet: run `streamflow build` first"):
        write_scores(unbuilt, date(2024, 3, 31), rows)
    with connect(unbuilt) as conn:
        assert conn.execute("select to_regclass('ml.churn_scores')").fetchone()[0] is None
    assert read_scores(unbuilt, date(2024, 3, 31)).empty


def test_drift_between_months_2_and_3_says_retrain_and_between_1_and_2_it_does_not(world):
    s, m = world.settings, world.months
    calm = drift(s, m[1], m[2])
    assert not calm.retrain and calm.drifted_share < s.drift_share_threshold
    proc = run_cli(s, "drift", "--reference", m[2].isoformat(), "--current", m[3].isoformat(), "--json")
    drifted = json.loads(proc.stdout)
    assert drifted["retrain"] and drifted["decision"] == "retrain"
    assert drifted["drifted_share"] >= s.drift_share_threshold
    assert drifted["drifted_share"] == pytest.approx(drifted["drifted_count"] / len(drifted["features"]))
    assert {c["column"] for c in drifted["columns"]} == set(FeastSource(s).model_features())
    html, report = Path(drifted["html"]), Path(drifted["json"])
    assert html.parent == report.parent == s.reports_dir
    assert "<html" in html.read_text()[:2000].lower() and json.loads(report.read_text())["retrain"] is True
    run = configure(s).get_run(drifted["run_id"])
    assert run.data.metrics["drifted_share"] == pytest.approx(drifted["drifted_share"])
    assert run.data.tags["streamflow.decision"] == "retrain"
    logged = {a.path for a in configure(s).list_artifacts(drifted["run_id"], "reports")}
    assert logged == {f"reports/{html.name}", f"reports/{report.name}"}
    # both decisions are in the warehouse, where the API exports the latest for alerting
    with connect(s) as conn:
        stored = dict(
            conn.execute(
                "select current_as_of, retrain from ops.drift_reports where reference_as_of in (%s, %s)", (m[1], m[2])
            ).fetchall()
        )
        latest = latest_state(conn)
    assert stored == {m[2]: False, m[3]: True}
    assert latest.drift_retrain is True and latest.drift_share == pytest.approx(drifted["drifted_share"])


def test_evaluate_reports_the_champion_next_to_the_oracle_for_each_labelled_period(world, champion):
    s, m = world.settings, world.months
    proc = run_cli(s, "evaluate", "--as-of", m[3].isoformat(), "--oracle", str(world.drops), "--json")
    shown = json.loads(proc.stdout)
    assert shown["model_version"] == champion.result.model_version
    periods = {p["period"]: p for p in shown["periods"]}
    assert list(periods) == [p.isoformat() for p in m[:3]]
    assert [p["role"] for p in periods.values()] == ["training", "training", "validation"]
    for p in periods.values():
        assert 0.5 < p["model_roc_auc"] <= 1 and 0.5 < p["oracle_roc_auc"] <= 1
        assert p["ratio"] == pytest.approx(p["model_roc_auc"] / p["oracle_roc_auc"])
    assert periods[m[2].isoformat()]["ratio"] > 0.9  # out of sample, close to the ceiling
    same = evaluate(s, m[3], oracle_dir=world.drops / "oracle")  # the oracle/ folder itself works too
    assert [q.model_roc_auc for q in same.periods] == [p["model_roc_auc"] for p in periods.values()]


def test_training_before_any_labelled_period_is_a_clear_error(world):
    proc = run_cli(world.settings, "train", "--as-of", world.months[0].isoformat(), check=False)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1 and "Traceback" not in out
    assert f"no labelled period before {world.months[0].isoformat()}" in out


def test_scoring_a_month_that_was_not_built_is_a_clear_error(world, champion):
    proc = run_cli(world.settings, "score", "--as-of", "2030-01-31", check=False)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1 and "Traceback" not in out
    assert "no month 2030-01-31" in out
