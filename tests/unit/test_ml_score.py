"""Batch-scoring rows, and the scores table: defined once (the dbt macro), written by `streamflow score`."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ml.errors import MLError
from ml.explain import Explainer
from ml.score import COLUMNS, score_frame
from ml.tracking import LoadedModel
from tests.conftest import ROOT
from tests.serving_support import MODEL_FEATURES, fitted_pipeline, user_values

AS_OF = date(2024, 3, 31)
MACRO = ROOT / "dbt_project" / "macros" / "ml_churn_scores.sql"
# A file defines the scores table when it creates a table named churn_scores, or creates a table with
# the scores' typed probability column (how ml/score.py spelled it: `create table ... {SCHEMA}.{TABLE}`).
CREATE_TABLE = re.compile(r"\bcreate\s+table\b", re.I)
NAMED = re.compile(r"\bcreate\s+table\s+(if\s+not\s+exists\s+)?[\w{}.\"]*churn_scores\b", re.I)
TYPED = re.compile(r"\bchurn_probability\s+double\s+precision\b", re.I)
SKIPPED_DIRS = {".git", ".venv", ".ruff_cache", "target", "dbt_packages", "node_modules", "__pycache__", "logs"}


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
    body = re.search(r"create\s+table\s+if\s+not\s+exists\s+ml\.churn_scores\s+\((.*?)\)\s*(;|$|\{)", sql, re.S | re.I)
    assert body, sql
    return [" ".join(line.strip().rstrip(",").split()) for line in body.group(1).strip().splitlines()]


def defines_scores_table(text: str) -> bool:
    return bool(NAMED.search(text) or (CREATE_TABLE.search(text) and TYPED.search(text)))


def _repository_files():
    this = Path(__file__).resolve()  # holds the patterns and the examples below
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not (d.startswith(".") and d != ".github")]
        for name in files:
            path = Path(folder) / name
            if path.resolve() != this and path.stat().st_size < 2_000_000:
                yield path


def test_the_scores_table_is_defined_in_exactly_one_file_the_dbt_macro():
    defining = []
    for path in _repository_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        if defines_scores_table(text):
            defining.append(path.relative_to(ROOT).as_posix())
    assert defining == ["dbt_project/macros/ml_churn_scores.sql"]


@pytest.mark.parametrize(
    "text",
    [
        # the DDL as ml/score.py held it before the macro became the one definition
        'DDL = f"""\ncreate table if not exists {SCHEMA}.{TABLE} (\n    churn_probability double precision not null',
        "CREATE TABLE ml.churn_scores (user_id text)",
        "create table churn_scores as select 1",
        MACRO.read_text(),
    ],
)
def test_the_guard_finds_a_definition_however_it_is_spelled(text):
    assert defines_scores_table(text)


def test_the_guard_ignores_readers_and_writers_of_the_table():
    assert not defines_scores_table("select churn_probability from ml.churn_scores")
    assert not defines_scores_table("copy ml.churn_scores (user_id, churn_probability) from stdin")


def test_the_scorer_writes_exactly_the_columns_of_the_table_dbt_creates():
    lines = _column_lines(MACRO.read_text())
    names = [line.split()[0] for line in lines if not line.startswith("primary key")]
    assert names == list(COLUMNS)
    assert "primary key (as_of, user_id)" in lines  # scoring a month again replaces, never duplicates


def test_every_build_creates_the_scores_table_before_the_mart_that_reads_it():
    model = (ROOT / "dbt_project" / "models" / "marts" / "churn_predictions.sql").read_text()
    hooks = re.search(r"pre_hook\s*=\s*\[(.*?)\]", model, re.S)
    assert hooks, model
    for macro in ("ensure_churn_scores_table", "ensure_shadow_scores_table"):
        assert re.search(r"\"\{\{\s*" + macro + r"\(\)\s*\}\}\"", hooks.group(1)), model
        assert "{% macro " + macro + "() -%}" in MACRO.read_text()


def test_dbt_declares_every_column_of_the_scores_table_as_a_source():
    sources = yaml.safe_load((ROOT / "dbt_project" / "models" / "ml" / "__ml_sources.yml").read_text())
    (ml_source,) = [s for s in sources["sources"] if s["name"] == "ml"]
    tables = {t["name"]: t for t in ml_source["tables"]}
    assert ml_source["schema"] == "ml" and set(tables) == {"churn_scores", "shadow_scores"}
    assert [c["name"] for c in tables["churn_scores"]["columns"]] == list(COLUMNS)
    shadow = re.search(r"ml\.shadow_scores\s+\((.*?)\);", MACRO.read_text(), re.S)
    assert shadow
    lines = [line.split()[0] for line in shadow.group(1).strip().splitlines()]
    declared = [name for name in lines if name != "primary"]
    assert [c["name"] for c in tables["shadow_scores"]["columns"]] == declared


@pytest.mark.parametrize("family", ["hist_gradient_boosting", "logistic_regression"])
def test_scores_carry_the_top_reasons_of_the_exact_values_scored(family):
    pipeline = fitted_pipeline(family)
    frame = pd.DataFrame([{"user_id": f"000{i}-AAAAA", **user_values(i)} for i in range(6)])
    frame.loc[2, "monthly_fee"] = None
    loaded = LoadedModel("streamflow_churn", "3", "run", pipeline, list(MODEL_FEATURES), 0.5)
    rows = score_frame(frame, loaded, AS_OF, datetime.now(UTC), {"contract_type": "Contract type"})
    margins, contributions = Explainer.of(pipeline, MODEL_FEATURES).explain(frame)
    for i, text in enumerate(rows["reasons"]):
        body = json.loads(text)
        assert body["margin"] == pytest.approx(margins[i], abs=1e-12)
        assert 1 / (1 + np.exp(-body["margin"])) == pytest.approx(rows["churn_probability"][i], abs=1e-12)
        line = dict(zip(MODEL_FEATURES, contributions[i], strict=True))
        assert [r["feature"] for r in body["up"]] == sorted((f for f in line if line[f] > 0), key=lambda f: -line[f])[
            :3
        ]
        assert [r["feature"] for r in body["down"]] == sorted((f for f in line if line[f] < 0), key=lambda f: line[f])[
            :3
        ]
        for r in body["up"] + body["down"]:
            assert r["contribution"] == pytest.approx(line[r["feature"]], abs=1e-12)
            assert r["label"] == ("Contract type" if r["feature"] == "contract_type" else r["feature"])
    assert json.loads(rows["reasons"][2])["margin"] is not None  # a missing fee is imputed, still explained


def test_a_model_without_an_exact_decomposition_is_scored_without_reasons():
    frame = pd.DataFrame({"user_id": ["0001-AAAAA", "0002-BBBBB"], "monthly_fee": [20.0, 50.0]})
    rows = score_frame(frame, model(), AS_OF, datetime.now(UTC))
    assert list(rows["reasons"]) == [None, None]
