"""Model families and metrics on small synthetic frames shaped like the feature store's training frame."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from ml.dataset import plan_validation, split_frame
from ml.evaluate import compare_with_oracle
from ml.metrics import best_threshold, classification_metrics
from ml.train import FAMILIES, Candidate, build_pipeline, choose, fit_candidates, model_input, split_columns

FEATURES = ["contract_type", "monthly_fee", "paperless_billing", "support_tickets_90d", "watch_hours_30d"]
PERIODS = [date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31)]


def synthetic(users: int = 600, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """A training frame whose churn depends on contract, fee, tickets and watch hours; returns (frame, true p)."""
    rng = np.random.default_rng(seed)
    frames, probs = [], []
    for period in PERIODS:
        contract = rng.choice(["Month-to-month", "One year", "Two year"], users, p=[0.55, 0.25, 0.2])
        fee = rng.uniform(20, 110, users).round(2)
        tickets = rng.poisson(0.5, users)
        watch = rng.gamma(2.0, 10.0, users)
        watch[rng.random(users) < 0.05] = np.nan  # users without sessions
        logit = (
            -2.0
            + 1.8 * (contract == "Month-to-month")
            + 0.02 * (fee - 60)
            + 0.6 * tickets
            - 0.04 * np.nan_to_num(watch, nan=5.0)
        )
        p = 1 / (1 + np.exp(-logit))
        frames.append(
            pd.DataFrame(
                {
                    "user_id": [f"{i:04d}-SYNTH" for i in range(users)],
                    "as_of": pd.Timestamp(period, tz="UTC"),
                    "churn_label": rng.random(users) < p,
                    "contract_type": contract,
                    "monthly_fee": fee,
                    "paperless_billing": rng.random(users) < 0.6,
                    "support_tickets_90d": tickets.astype("int64"),
                    "watch_hours_30d": watch,
                }
            )
        )
        probs.append(pd.Series(p))
    return pd.concat(frames, ignore_index=True), pd.concat(probs, ignore_index=True)


@pytest.fixture(autouse=True)
def one_thread():
    """One OpenMP thread, as `streamflow train` uses by default: fast and stable on a busy machine."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def split():
    f, _ = synthetic()
    return split_frame(f, plan_validation(PERIODS), fraction=0.25, seed=42)


def test_numbers_and_booleans_are_numeric_and_strings_categorical():
    f, _ = synthetic(users=50)
    numeric, categorical = split_columns(f, FEATURES)
    assert categorical == ["contract_type"]
    assert numeric == ["monthly_fee", "paperless_billing", "support_tickets_90d", "watch_hours_30d"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_learns_from_the_raw_frame_with_missing_values_and_unseen_categories(family, split):
    train, valid = split
    numeric, categorical = split_columns(train, FEATURES)
    pipe = build_pipeline(family, numeric, categorical, seed=42).fit(train[FEATURES], train["churn_label"])
    unseen = valid[FEATURES].head(20).copy()
    unseen.loc[:4, "contract_type"] = "Three year"  # a category never seen in training
    unseen.loc[5:9, "monthly_fee"] = np.nan
    proba = pipe.predict_proba(unseen)[:, 1]
    assert proba.shape == (20,) and np.all((proba >= 0) & (proba <= 1))
    assert roc_auc_score(valid["churn_label"], pipe.predict_proba(valid[FEATURES])[:, 1]) > 0.7


def test_class_weights_balance_the_minority_class(split):
    train, _ = split
    numeric, categorical = split_columns(train, FEATURES)
    pipe = build_pipeline("logistic_regression", numeric, categorical, seed=42)
    assert pipe.named_steps["classifier"].class_weight == "balanced"
    pipe.fit(train[FEATURES], train["churn_label"])
    # balanced weights pull the mean prediction towards 0.5, well above the churn rate
    assert pipe.predict_proba(train[FEATURES])[:, 1].mean() > train["churn_label"].mean() + 0.1


def test_the_same_frame_gives_the_same_models_and_metrics(split):
    train, valid = split
    first = fit_candidates(train, valid, FEATURES, seed=42)
    second = fit_candidates(train, valid, FEATURES, seed=42)
    for a, b in zip(first, second, strict=True):
        assert a.metrics == b.metrics
        np.testing.assert_array_equal(a.proba, b.proba)


def test_candidates_carry_validation_metrics_at_their_own_threshold(split):
    train, valid = split
    for c in fit_candidates(train, valid, FEATURES, seed=42):
        assert set(c.metrics) >= {"roc_auc", "pr_auc", "log_loss", "brier", "f1", "threshold"}
        assert c.metrics["threshold"] == c.threshold == best_threshold(valid["churn_label"], c.proba)
        assert c.params  # hyperparameters to log


def _cand(family, auc, ll):
    return Candidate(family, None, np.array([]), 0.5, {"roc_auc": auc, "log_loss": ll}, 0.0)


def test_the_best_candidate_has_the_highest_auc_then_the_lowest_log_loss():
    assert choose([_cand("a", 0.80, 0.4), _cand("b", 0.82, 0.5)]).family == "b"
    assert choose([_cand("a", 0.80, 0.4), _cand("b", 0.80, 0.3)]).family == "b"
    assert choose([_cand("a", 0.80, 0.4), _cand("b", 0.80, 0.4)]).family == "a"


def test_threshold_maximises_f1():
    rng = np.random.default_rng(3)
    y = rng.random(500) < 0.2
    p = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    t = best_threshold(y, p)

    def f1_at(cut):
        predicted = p >= cut
        tp = np.sum(predicted & y)
        return 2 * tp / (predicted.sum() + y.sum())

    best_brute = max(f1_at(c) for c in np.unique(p))
    assert f1_at(t) == pytest.approx(best_brute)
    assert classification_metrics(y, p, t)["f1"] == pytest.approx(best_brute)


def test_metrics_of_a_perfect_and_of_a_useless_ranking():
    y = np.array([0, 0, 1, 1], dtype=bool)
    perfect = classification_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]), 0.5)
    assert perfect["roc_auc"] == 1.0 and perfect["f1"] == 1.0 and perfect["pr_auc"] == 1.0
    useless = classification_metrics(y, np.array([0.5, 0.5, 0.5, 0.5]), 0.5)
    assert useless["roc_auc"] == 0.5
    assert useless["brier"] == pytest.approx(0.25) and useless["log_loss"] == pytest.approx(np.log(2))


def test_model_input_declares_every_integer_column_as_int64():
    f, _ = synthetic(users=10)
    f["support_tickets_90d"] = f["support_tickets_90d"].astype("int32")
    x = model_input(f, FEATURES)
    assert x["support_tickets_90d"].dtype == "int64"
    assert x["monthly_fee"].dtype == "float64"
    assert x["paperless_billing"].dtype == bool and x["contract_type"].dtype == object


def test_oracle_comparison_uses_only_users_in_both_and_the_oracle_ranks_best():
    f, true_p = synthetic(users=500, seed=9)
    rows = f[f["as_of"] == f["as_of"].min()].reset_index(drop=True)
    p = true_p.iloc[: len(rows)].to_numpy()
    oracle = pd.DataFrame({"user_id": rows["user_id"], "churn_probability": p}).iloc[:400]
    noisy = p + np.random.default_rng(1).normal(0, 0.2, len(p))
    model_auc, oracle_auc, n = compare_with_oracle(rows, noisy, oracle)
    assert n == 400
    assert oracle_auc > model_auc > 0.5
