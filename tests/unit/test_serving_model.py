"""The serving model: the compiled scorer gives the pipeline's own probabilities (or is not used), and the holder
swaps models atomically and keeps serving through registry errors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from ml.train import build_pipeline
from serving.model import ModelHolder, ModelUnavailable
from serving.scorer import canonical_frame, check_rows, compile_scorer
from tests.serving_support import (
    CATEGORICAL,
    MODEL_FEATURES,
    NUMERIC,
    LocalModels,
    fitted_pipeline,
    serving_model,
    training_frame,
    user_values,
)


def awkward_rows() -> list[dict]:
    """Rows a live store can hand over: missing values, an unknown category, booleans, integers."""
    rows = [user_values(i) for i in range(12)]
    rows[0]["contract_type"] = "Three year"  # never seen in training
    rows[1]["monthly_fee"] = None
    rows[2]["contract_type"] = None
    rows[3]["watch_hours_30d"] = float("nan")
    rows[4]["paperless_billing"] = None
    return rows


def pipeline_proba(pipeline, rows):
    return pipeline.predict_proba(canonical_frame(rows, MODEL_FEATURES))[:, 1]


@pytest.mark.parametrize("family", ["hist_gradient_boosting", "logistic_regression"])
def test_the_compiled_model_gives_the_pipelines_own_probabilities(family):
    pipeline = fitted_pipeline(family)
    scorer = compile_scorer(pipeline, MODEL_FEATURES)
    assert scorer.kind == "compiled"
    rows = awkward_rows() + check_rows(pipeline, MODEL_FEATURES, count=300, seed=7)
    expected = pipeline_proba(pipeline, rows)
    got = scorer.proba(rows)
    assert np.max(np.abs(got - expected)) <= 1e-12
    # one row at a time, as /predict scores, gives exactly the batch's numbers
    assert [float(scorer.proba([r])[0]) for r in rows] == list(got)


def test_the_compiled_trees_are_bit_for_bit_the_pipeline():
    pipeline = fitted_pipeline("hist_gradient_boosting", seed=3)
    rows = check_rows(pipeline, MODEL_FEATURES, count=200, seed=11)
    assert np.array_equal(compile_scorer(pipeline, MODEL_FEATURES).proba(rows), pipeline_proba(pipeline, rows))


def test_a_classifier_without_a_compiled_form_is_called_on_the_encoded_rows():
    frame, y = training_frame()
    pipeline = fitted_pipeline("logistic_regression")
    forest = Pipeline(
        [("preprocess", pipeline.steps[0][1]), ("classifier", RandomForestClassifier(n_estimators=20, random_state=0))]
    )
    forest.fit(frame[MODEL_FEATURES], y)
    scorer = compile_scorer(forest, MODEL_FEATURES)
    assert scorer.kind == "encoded"
    rows = awkward_rows()
    assert np.max(np.abs(scorer.proba(rows) - pipeline_proba(forest, rows))) <= 1e-12


class SharperLogisticRegression(LogisticRegression):
    """A logistic regression whose probabilities are not the plain sigmoid of its decision function."""

    def predict_proba(self, X):
        p = 1 / (1 + np.exp(-2 * self.decision_function(X)))
        return np.column_stack([1 - p, p])


def test_a_compiled_form_that_disagrees_with_the_pipeline_is_not_used():
    frame, y = training_frame()
    pipeline = build_pipeline("logistic_regression", NUMERIC, CATEGORICAL, 0)
    pipeline.steps[-1] = ("classifier", SharperLogisticRegression(max_iter=2000))
    pipeline.fit(frame[MODEL_FEATURES], y)
    scorer = compile_scorer(pipeline, MODEL_FEATURES)
    assert scorer.kind == "encoded"  # the plain dot-product form was checked and refused
    rows = awkward_rows()
    assert np.max(np.abs(scorer.proba(rows) - pipeline_proba(pipeline, rows))) <= 1e-12


def test_an_unsupported_preprocessor_scores_with_the_full_pipeline():
    frame, y = training_frame()
    base = fitted_pipeline("logistic_regression")
    odd = Pipeline(
        [
            ("preprocess", base.steps[0][1]),
            ("square", FunctionTransformer(np.square)),
            ("classifier", LogisticRegression(max_iter=2000)),
        ]
    ).fit(frame[MODEL_FEATURES], y)
    scorer = compile_scorer(odd, MODEL_FEATURES)
    assert scorer.kind == "pipeline"
    rows = awkward_rows()
    assert np.array_equal(scorer.proba(rows), pipeline_proba(odd, rows))


def test_the_fast_path_can_be_switched_off():
    assert compile_scorer(fitted_pipeline(), MODEL_FEATURES, fast=False).kind == "pipeline"


# ---------------------------------------------------------------------------------------
# the holder
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_models():
    return {"1": serving_model("1", seed=0), "2": serving_model("2", "logistic_regression", seed=1)}


def test_the_holder_serves_nothing_until_the_alias_exists(two_models):
    registry = LocalModels(two_models, alias=None)
    holder = ModelHolder(registry, poll_seconds=60)
    assert holder.poll() is False
    assert holder.current is None and holder.registry_ok
    with pytest.raises(ModelUnavailable, match="no champion"):
        holder.require()
    registry.version = "1"
    assert holder.poll() is True and holder.current.version == "1"


def test_a_moved_alias_swaps_the_model_and_a_request_keeps_the_model_it_started_with(two_models):
    registry = LocalModels(two_models, alias="1")
    swaps = []
    holder = ModelHolder(registry, poll_seconds=60, on_swap=lambda new, old: swaps.append((new.version, old)))
    holder.poll()
    in_flight = holder.current  # what a request read when it started
    registry.version = "2"
    assert holder.poll() is True
    assert holder.current.version == "2" and in_flight.version == "1"
    row = [user_values(4)]
    assert in_flight.proba(row)[0] == pytest.approx(two_models["1"].proba(row)[0])
    assert in_flight.proba(row)[0] != pytest.approx(holder.current.proba(row)[0])
    assert holder.poll() is False and registry.loads == 2  # an unchanged alias loads nothing
    assert [v for v, _old in swaps] == ["1", "2"] and swaps[1][1] is in_flight


def test_registry_errors_keep_the_current_model_and_are_reported(two_models):
    registry = LocalModels(two_models, alias="1")
    errors = []
    holder = ModelHolder(registry, poll_seconds=60, on_error=errors.append)
    holder.poll()
    registry.fail, registry.version = True, "2"
    assert holder.poll() is False
    assert holder.current.version == "1" and not holder.registry_ok
    assert "not reachable" in holder.last_error and len(errors) == 1
    registry.fail = False
    assert holder.poll() is True and holder.current.version == "2" and holder.registry_ok


def test_the_background_poller_picks_up_a_new_champion_without_readers_ever_seeing_none(two_models):
    registry = LocalModels(two_models, alias="1")
    holder = ModelHolder(registry, poll_seconds=0.05)
    holder.start()
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(holder.current.version)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        time.sleep(0.2)
        registry.version = "2"
        deadline = time.monotonic() + 10
        while holder.current.version != "2" and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
    finally:
        stop.set()
        thread.join()
        holder.stop()
    assert holder.current.version == "2"
    first_two = seen.index("2")
    assert set(seen[:first_two]) == {"1"} and set(seen[first_two:]) == {"2"}  # one switch, never back, never None
