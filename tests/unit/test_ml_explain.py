"""Reasons: every model family the trainer produces splits its margin exactly into a base and one contribution per
feature (compiled scorer and batch alike), the contributions move as the model says they should, and the labels
come from the dbt docs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from ml.explain import DOWN, UP, Explainer, TreePaths, top_reasons
from ml.train import FAMILIES
from serving.scorer import canonical_frame, check_rows, compile_scorer
from streamflow.features.labels import feature_labels, label_of
from streamflow.warehouse.runner import manifest_path, parse
from tests.conftest import make_settings
from tests.serving_support import MODEL_FEATURES, fitted_pipeline, user_values

ROWS = 600  # rows per family: known and unknown categories, missing values, values far outside training


def rows_for(pipeline) -> list[dict]:
    rows = [user_values(i) for i in range(12)] + check_rows(pipeline, MODEL_FEATURES, count=ROWS, seed=11)
    rows[0]["contract_type"] = "Three year"  # never seen in training
    rows[1]["monthly_fee"] = None
    rows[2]["watch_hours_30d"] = float("nan")
    return rows


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param, fitted_pipeline(request.param)


def test_every_family_is_explained_and_base_plus_contributions_is_the_models_margin(family):
    name, pipeline = family
    rows = rows_for(pipeline)
    frame = canonical_frame(rows, MODEL_FEATURES)
    margin = pipeline.decision_function(frame)  # the classifier's own log-odds
    for fast in (True, False):
        scorer = compile_scorer(pipeline, MODEL_FEATURES, fast=fast)
        assert scorer.base is not None, f"{name} (fast={fast}) has no reasons"
        proba, got_margin, contributions = scorer.explain(rows)
        assert contributions.shape == (len(rows), len(MODEL_FEATURES))
        np.testing.assert_allclose(scorer.base + contributions.sum(axis=1), margin, rtol=0, atol=1e-9)
        np.testing.assert_allclose(got_margin, margin, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(proba, scorer.proba(rows))  # the probability served is the one explained
        assert np.all(np.abs(contributions).sum(axis=1) > 0)
    # batch scoring's explainer (the pipeline's own encoding) gives the same contributions
    batch_margin, batch = Explainer.of(pipeline, MODEL_FEATURES).explain(frame)
    np.testing.assert_allclose(batch_margin, margin, rtol=0, atol=1e-9)
    np.testing.assert_allclose(batch, compile_scorer(pipeline, MODEL_FEATURES).explain(rows)[2], rtol=0, atol=1e-9)


def test_a_large_batch_is_explained_in_bounded_memory_with_the_same_contributions(family, monkeypatch):
    _name, pipeline = family
    rows = rows_for(pipeline)
    frame = canonical_frame(rows, MODEL_FEATURES)
    explainer = Explainer.of(pipeline, MODEL_FEATURES)
    margin, contributions = explainer.explain(frame)
    monkeypatch.setattr("ml.explain.PATH_SUM_LIMIT", 0)  # trees summed one by one, as for a month of users
    chunked_margin, chunked = explainer.explain(frame, chunk=50)
    np.testing.assert_allclose(chunked_margin, margin, rtol=0, atol=1e-12)
    np.testing.assert_allclose(chunked, contributions, rtol=0, atol=1e-12)


def test_one_row_is_explained_exactly_as_in_a_batch(family):
    _name, pipeline = family
    scorer = compile_scorer(pipeline, MODEL_FEATURES)
    rows = [user_values(i) for i in range(8)]
    together = scorer.explain(rows)[2]
    for i, row in enumerate(rows):
        np.testing.assert_allclose(scorer.explain([row])[2][0], together[i], rtol=0, atol=1e-12)


def test_a_linear_contribution_is_the_coefficient_times_the_standardized_value():
    pipeline = fitted_pipeline("logistic_regression")
    scorer = compile_scorer(pipeline, MODEL_FEATURES)
    clf = pipeline.named_steps["classifier"]
    pre = pipeline.named_steps["preprocess"]
    numeric = pre.named_transformers_["numeric"]
    j = list(numeric.feature_names_in_).index("monthly_fee")
    coef = clf.coef_[0][pre.output_indices_["numeric"].start + j]
    scale = numeric.named_steps["scale"].scale_[j]
    assert coef > 0, "the training data makes a higher fee raise the churn risk"
    low, high = user_values(0), {**user_values(0), "monthly_fee": user_values(0)["monthly_fee"] + 25}
    c = scorer.explain([low, high])[2]
    f = MODEL_FEATURES.index("monthly_fee")
    assert c[1, f] - c[0, f] == pytest.approx(coef * 25 / scale, abs=1e-12)
    others = [k for k in range(len(MODEL_FEATURES)) if k != f]
    np.testing.assert_array_equal(c[0, others], c[1, others])  # nothing else moved
    # a category's contribution is its own one-hot coefficient, summed back to contract_type
    cats = list(pre.named_transformers_["categorical"].named_steps["one_hot"].categories_[0])
    start = pre.output_indices_["categorical"].start
    k = MODEL_FEATURES.index("contract_type")
    assert c[0, k] == pytest.approx(clf.coef_[0][start + cats.index(low["contract_type"])], abs=1e-12)


def test_a_tree_contribution_follows_the_feature_the_trees_split_on():
    pipeline = fitted_pipeline("hist_gradient_boosting")
    scorer = compile_scorer(pipeline, MODEL_FEATURES)
    k = MODEL_FEATURES.index("contract_type")
    rows = [{**user_values(0), "contract_type": c} for c in ("Month-to-month", "Two year")]
    c = scorer.explain(rows)[2]
    # the training label rises with a month-to-month contract: it pushes up, a two-year one holds down
    assert c[0, k] > 0 > c[1, k]


def test_top_reasons_are_the_largest_pushes_each_way_with_label_and_served_value():
    contributions = np.array([0.5, -0.2, 0.0, 1.5, -0.9, 0.1])
    values = ["Month-to-month", 3, 70.5, np.float64(2.0), float("nan"), True]
    names = ["contract_type", "months_active", "monthly_fee", "watch_hours_30d", "unique_devices_30d", "paperless"]
    out = top_reasons(contributions, values, names, {"contract_type": "Contract type"}, count=2)
    assert [r["feature"] for r in out[UP]] == ["watch_hours_30d", "contract_type"]
    assert [r["feature"] for r in out[DOWN]] == ["unique_devices_30d", "months_active"]
    assert out[UP][1] == {
        "feature": "contract_type",
        "label": "Contract type",
        "value": "Month-to-month",
        "contribution": 0.5,
    }
    assert out[UP][0]["value"] == 2.0 and type(out[UP][0]["value"]) is float  # numpy scalars become JSON numbers
    assert out[DOWN][0]["value"] is None  # NaN is not JSON
    assert out[DOWN][0]["label"] == "unique_devices_30d"  # undocumented: its name
    everything = top_reasons(contributions, values, names, {}, count=10)
    assert len(everything[UP]) == 3 and len(everything[DOWN]) == 2  # a zero contribution is no reason
    assert top_reasons(contributions, values, names, {}, count=0) == {UP: [], DOWN: []}


def test_a_label_is_the_first_sentence_of_a_description():
    assert label_of("Contract type. Month-to-month, One year or Two year.") == "Contract type"
    assert label_of("Mean minutes per session in the last 7 days; 0.0 without sessions.") == (
        "Mean minutes per session in the last 7 days"
    )
    assert (
        label_of("Hours watched in the last 30 days (minutes / 60).")
        == "Hours watched in the last 30 days (minutes / 60)"
    )
    assert label_of("Monthly fee of the plan.\n  Always > 0.") == "Monthly fee of the plan"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("home")
    settings = make_settings(home, dbt_target_path=home / "dbt" / "target")
    parse(settings)  # no database
    return json.loads(manifest_path(settings).read_text())


def test_every_model_input_has_a_label_from_the_dbt_docs(manifest):
    inputs = [
        "senior_citizen",
        "contract_type",
        "months_active",
        "monthly_fee",
        "payment_method",
        "watch_hours_30d",
        "avg_session_mins_7d",
        "failed_payments_90d",
        "ticket_avg_resolution_hrs_90d",
        "fee_per_active_month",
        "watch_hours_per_device",
        "tickets_per_active_month",
    ]
    labels = feature_labels(manifest, inputs)
    assert labels["contract_type"] == "Contract type"
    assert labels["monthly_fee"] == "Monthly fee of the plan"
    assert labels["watch_hours_30d"] == "Hours watched in the last 30 days (minutes / 60)"
    assert labels["fee_per_active_month"] == "Monthly fee per month subscribed"  # a derived feature's doc block
    assert all(labels[f] != f and labels[f] for f in inputs), labels
    assert feature_labels(manifest, ["not_documented"]) == {"not_documented": "not_documented"}


def test_the_tree_walk_sends_missing_and_infinite_values_where_the_classifier_does():
    """Trees trained with missing values learn, split by split, which side they go to; the flat walk must land
    in the classifier's own leaves for NaN, -inf and +inf inputs, bit for bit."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(3000, 4))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    X[rng.random(X.shape) < 0.15] = np.nan  # missing on both sides of many splits
    y[np.isnan(X[:, 3])] = 1  # and a feature whose missingness alone predicts the label
    clf = HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(X, y)
    nodes = np.concatenate([p[0].nodes for p in clf._predictors])
    splits = nodes[~nodes["is_leaf"].astype(bool)]
    assert splits["missing_go_to_left"].any() and not splits["missing_go_to_left"].all()
    probe = rng.normal(size=(500, 4))
    probe[rng.random(probe.shape) < 0.3] = np.nan
    probe[::37, 1] = np.inf
    probe[::41, 2] = -np.inf
    walked = TreePaths(clf)
    assert np.array_equal(walked.margin(probe), clf._raw_predict(probe).ravel())
    margin, contributions = walked.explain(probe)
    assert np.array_equal(margin, clf._raw_predict(probe).ravel())
    np.testing.assert_allclose(walked.base + contributions.sum(axis=1), margin, atol=1e-9)
