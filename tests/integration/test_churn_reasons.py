"""Reasons in the warehouse, on real services: `streamflow score` stores each user's top reasons (from the exact
feature vector scored) in ml.churn_scores, the dbt mart churn_reasons equals an independent pandas aggregation of
them, and a warehouse built before reasons existed gains the column at its next build."""

from __future__ import annotations

import json
import math
import subprocess
from datetime import date

import numpy as np
import pandas as pd
import pytest

from ml.dataset import FeastSource
from ml.errors import MLError
from ml.explain import Explainer
from ml.promote import promote
from ml.score import read_scores, score
from ml.tracking import load_model_alias
from ml.train import train
from streamflow.core.db import connect
from streamflow.core.env import tool_environment
from streamflow.core.settings import Settings
from streamflow.drops.generator import params
from streamflow.features import apply
from streamflow.warehouse import runner
from tests.conftest import ROOT, WAREHOUSE_MONTHS, fresh_database, settings_env

pytestmark = pytest.mark.integration

MONTH = params.as_of(WAREHOUSE_MONTHS - 1)  # labels of the two months before it are in the warehouse
KEY = ["as_of", "contract_type", "risk_decile", "direction", "feature"]


@pytest.fixture(scope="module")
def scored(warehouse_copy, mlflow_settings) -> Settings:
    """A copy of the built warehouse with Feast applied, a champion of its own, the last month scored and the
    ML marts built."""
    fresh_database(mlflow_settings, "reasons_feast")
    settings = warehouse_copy("reasons_warehouse").model_copy(
        update={
            "mlflow_db": mlflow_settings.mlflow_db,
            "mlflow_tracking_uri": None,
            "feast_registry_db": "reasons_feast",
            "model_name": "reasons_churn",
            "mlflow_experiment": "reasons",
        }
    )
    apply.apply(settings)
    train(settings, MONTH)
    promote(settings)
    score(settings, MONTH)
    build_ml_marts(settings, MONTH)
    return settings


def build_ml_marts(settings: Settings, month: date) -> None:
    res = runner.invoke(
        settings,
        ["build", "--select", "churn_predictions", "churn_reasons", "--vars", json.dumps({"as_of": str(month)})],
    )
    assert res.success, res.exception


def test_stored_reasons_are_the_champions_contributions_for_the_values_scored(scored):
    stored = read_scores(scored, MONTH)
    model = load_model_alias(scored, "champion")
    frame = FeastSource(scored).feature_frame(MONTH).sort_values("user_id").reset_index(drop=True)
    assert list(frame["user_id"]) == list(stored["user_id"])
    explainer = Explainer.of(model.pipeline, model.features)
    margins, contributions = explainer.explain(frame)
    with_reasons = 0
    for i, reasons in enumerate(stored["reasons"]):
        assert reasons["base"] == pytest.approx(explainer.base, abs=1e-12)
        assert reasons["margin"] == pytest.approx(margins[i], abs=1e-9)
        p = stored["churn_probability"].iloc[i]
        assert 1 / (1 + math.exp(-reasons["margin"])) == pytest.approx(p, abs=1e-9)
        line = dict(zip(model.features, contributions[i], strict=True))
        ups, downs = (
            sorted((c for c in line.values() if c > 0), reverse=True),
            sorted(c for c in line.values() if c < 0),
        )
        assert [r["contribution"] for r in reasons["up"]] == pytest.approx(ups[:3], abs=1e-12)
        assert [r["contribution"] for r in reasons["down"]] == pytest.approx(downs[:3], abs=1e-12)
        for r in reasons["up"] + reasons["down"]:
            assert r["contribution"] == pytest.approx(line[r["feature"]], abs=1e-12)
            served = frame[r["feature"]].iloc[i]
            assert r["value"] == (served.item() if isinstance(served, np.generic) else served)
            assert r["label"] and r["label"] != r["feature"]  # every model input is described in the dbt docs
        with_reasons += bool(reasons["up"] or reasons["down"])
    assert with_reasons == len(stored) > 0


def reference(settings: Settings) -> pd.DataFrame:
    """churn_reasons computed in pandas from the stored reasons and churn_predictions' segments."""
    stored = read_scores(settings, MONTH)
    with connect(settings) as conn:
        cur = conn.execute("select user_id, as_of, contract_type, risk_decile from marts.churn_predictions")
        predictions = pd.DataFrame(cur.fetchall(), columns=["user_id", "as_of", "contract_type", "risk_decile"])
    listed = [
        {
            "user_id": user,
            "direction": direction,
            "rank": rank,
            "feature": r["feature"],
            "contribution": r["contribution"],
        }
        for user, reasons in zip(stored["user_id"], stored["reasons"], strict=True)
        for direction in ("up", "down")
        for rank, r in enumerate(reasons[direction], start=1)
    ]
    reasons = pd.DataFrame(listed).merge(predictions, on="user_id")
    out = (
        reasons.groupby(KEY, dropna=False)
        .agg(
            users_with_reason=("user_id", "size"),
            users_with_it_first=("rank", lambda r: int((r == 1).sum())),
            mean_contribution=("contribution", "mean"),
            total_contribution=("contribution", "sum"),
        )
        .reset_index()
    )
    segments = predictions.groupby(["as_of", "contract_type", "risk_decile"], dropna=False).size()
    out["users_in_segment"] = [
        segments[(a, c, d)] for a, c, d in zip(out.as_of, out.contract_type, out.risk_decile, strict=True)
    ]
    out["share_of_segment"] = out["users_with_reason"] / out["users_in_segment"]
    return out.sort_values(KEY).reset_index(drop=True)


def test_the_churn_reasons_mart_equals_a_pandas_aggregation_of_the_stored_reasons(scored):
    expected = reference(scored)
    with connect(scored) as conn:
        cur = conn.execute(
            "select as_of, contract_type, risk_decile, direction, feature, users_with_reason, users_with_it_first, "
            "mean_contribution, total_contribution, users_in_segment, share_of_segment, feature_label "
            "from marts.churn_reasons"
        )
        got = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
    got = got.sort_values(KEY).reset_index(drop=True)
    assert len(got) == len(expected) > 0
    assert set(got["direction"]) == {"up", "down"} and got["risk_decile"].nunique() == 10
    for column in ("contract_type", "risk_decile", "direction", "feature", "users_with_reason", "users_with_it_first"):
        assert list(got[column]) == list(expected[column]), column
    assert list(got["users_in_segment"]) == list(expected["users_in_segment"])
    for column in ("mean_contribution", "total_contribution", "share_of_segment"):
        np.testing.assert_allclose(got[column].to_numpy(float), expected[column].to_numpy(float), rtol=1e-9, atol=1e-12)
    assert got["feature_label"].notna().all() and (got["feature_label"] != got["feature"]).all()
    up, down = got[got.direction == "up"], got[got.direction == "down"]
    assert (up["mean_contribution"] > 0).all() and (down["mean_contribution"] < 0).all()


def test_the_ml_marts_pass_sqlfluff(scored):
    env = {**settings_env(scored), **tool_environment(scored)}
    proc = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "sqlfluff"),
            "lint",
            "models/marts/churn_reasons.sql",
            "models/marts/churn_predictions.sql",
            "--nocolor",
        ],
        cwd=ROOT / "dbt_project",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_a_scores_table_from_before_reasons_is_refused_until_a_build_adds_the_column(scored):
    with connect(scored) as conn:
        # the table and views as an earlier version built them: no reasons column, no view reading it
        conn.execute("drop view if exists marts.churn_reasons, marts.churn_predictions")
        conn.execute("alter table ml.churn_scores drop column reasons")
    with pytest.raises(MLError, match="no reasons column yet.*streamflow build"):
        score(scored, MONTH)
    build_ml_marts(scored, MONTH)  # the pre_hook migrates the table
    result = score(scored, MONTH)
    assert result.rows == len(read_scores(scored, MONTH)) and read_scores(scored, MONTH)["reasons"].notna().all()


def test_scoring_in_chunks_stores_exactly_the_rows_of_one_chunk(scored):
    """A month scored 100 users at a time (several chunks, the last partial) replaces the month with the same rows
    as scoring it in one chunk: same users, probabilities, labels, version and reasons; one scored_at."""
    whole = score(scored.model_copy(update={"score_chunk_rows": 1_000_000}), MONTH)
    one_chunk = read_scores(scored, MONTH)
    assert whole.rows == len(one_chunk) > 250
    chunked = score(scored.model_copy(update={"score_chunk_rows": 100}), MONTH)
    in_chunks = read_scores(scored, MONTH)
    assert (chunked.rows, chunked.predicted_churners) == (whole.rows, whole.predicted_churners)
    assert chunked.replaced_rows == whole.rows
    assert in_chunks["scored_at"].nunique() == 1
    columns = [c for c in in_chunks.columns if c != "scored_at"]
    pd.testing.assert_frame_equal(in_chunks[columns], one_chunk[columns])
    assert in_chunks["reasons"].notna().all()
