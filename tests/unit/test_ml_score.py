"""Batch-scoring rows, and the scores table defined identically for `streamflow score` and for dbt."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pytest

from ml.errors import MLError
from ml.score import COLUMNS, DDL, score_frame
from ml.tracking import LoadedModel
from tests.conftest import ROOT

AS_OF = date(2024, 3, 31)


class FixedPipeline:
    """A stand-in estimator with a known probability per row (fee / 100)."""

    def predict_proba(self, x: pd.DataFrame):
        p = x["monthly_fee"].to_numpy() / 100
        return np.column_stack([1 - p, p])


def model(threshold=0.5) -> LoadedModel:
    return LoadedModel("streamflow_churn", "7", "run", FixedPipeline(), ["monthly_fee"], threshold)


def test_scores_are_one_row_per_user_in_user_order_with_the_label_at_the_threshold():
    frame = pd.DataFrame(
        {"user_id": ["0003-CCCCC", "0001-AAAAA", "0002-BBBBB"], "monthly_fee": [80.0, 20.0, 50.0], "extra": [1, 2, 3]}
    )
    at = datetime(2024, 4, 2, tzinfo=UTC)
    rows = score_frame(frame, model(threshold=0.5), AS_OF, at)
    assert list(rows.columns) == list(COLUMNS)
    assert list(rows["user_id"]) == ["0001-AAAAA", "0002-BBBBB", "0003-CCCCC"]
    assert list(rows["churn_probability"]) == pytest.approx([0.2, 0.5, 0.8])
    assert list(rows["churn_label_predicted"]) == [False, True, True]  # at the threshold counts as churn
    assert set(rows["model_version"]) == {7} and set(rows["as_of"]) == {AS_OF} and set(rows["scored_at"]) == {at}


def test_a_feature_frame_with_duplicate_users_is_refused():
    frame = pd.DataFrame({"user_id": ["0001-AAAAA", "0001-AAAAA"], "monthly_fee": [10.0, 20.0]})
    with pytest.raises(MLError, match="duplicate"):
        score_frame(frame, model(), AS_OF, datetime.now(UTC))


def test_a_frame_missing_a_model_feature_is_a_clear_error():
    frame = pd.DataFrame({"user_id": ["0001-AAAAA"], "other": [1.0]})
    with pytest.raises(MLError, match=r"needs features the frame lacks: \['monthly_fee'\]"):
        score_frame(frame, model(), AS_OF, datetime.now(UTC))


def _column_lines(sql: str) -> list[str]:
    body = re.search(r"create table if not exists ml\.churn_scores \((.*?)\)\s*(;|$|\{)", sql, re.S | re.I)
    assert body, sql
    return [" ".join(line.strip().rstrip(",").split()) for line in body.group(1).strip().splitlines()]


def test_dbt_creates_the_scores_table_exactly_as_the_scorer_does():
    macro = (ROOT / "dbt_project" / "macros" / "ml_churn_scores.sql").read_text()
    assert _column_lines(macro) == _column_lines(DDL)
    names = [line.split()[0] for line in _column_lines(DDL) if not line.startswith("primary key")]
    assert names == list(COLUMNS)


def test_dbt_declares_every_column_of_the_scores_table_as_a_source():
    import yaml

    sources = yaml.safe_load((ROOT / "dbt_project" / "models" / "ml" / "__ml_sources.yml").read_text())
    (ml,) = [s for s in sources["sources"] if s["name"] == "ml"]
    (table,) = ml["tables"]
    assert (ml["schema"], table["name"]) == ("ml", "churn_scores")
    assert [c["name"] for c in table["columns"]] == list(COLUMNS)
