"""Periods, validation split and the training-frame digest: pure functions on small synthetic frames."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from ml.dataset import frame_digest, periods_up_to, plan_validation, split_frame
from ml.errors import MLError

JAN, FEB, MAR, APR = date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31), date(2024, 4, 30)


def frame(periods, users=40, churn_every=4, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in periods:
        for i in range(users):
            rows.append(
                {
                    "user_id": f"{i:04d}-ABCDE",
                    "as_of": pd.Timestamp(p, tz="UTC"),
                    "churn_label": i % churn_every == 0,
                    "monthly_fee": float(rng.uniform(20, 100)),
                    "contract_type": ["Month-to-month", "One year", "Two year"][i % 3],
                }
            )
    return pd.DataFrame(rows)


def test_a_run_trains_only_on_periods_before_its_as_of():
    available = [MAR, JAN, FEB, MAR, APR]
    assert periods_up_to(available, APR) == [JAN, FEB, MAR]
    assert periods_up_to(available, FEB) == [JAN]
    assert periods_up_to(available, JAN) == []


def test_two_or_more_periods_validate_out_of_time_on_the_latest():
    plan = plan_validation([FEB, JAN, MAR])
    assert plan.strategy == "out_of_time"
    assert plan.train_periods == (JAN, FEB) and plan.validation_periods == (MAR,)


def test_one_period_is_split_stratified():
    plan = plan_validation([JAN])
    assert plan.strategy == "stratified"
    assert plan.train_periods == plan.validation_periods == (JAN,)


def test_no_period_is_a_clear_error():
    with pytest.raises(MLError, match="no labelled period"):
        plan_validation([])


def test_out_of_time_split_puts_the_latest_period_in_validation_only():
    f = frame([JAN, FEB, MAR])
    train, valid = split_frame(f, plan_validation([JAN, FEB, MAR]), fraction=0.25, seed=1)
    assert set(valid["as_of"].dt.date) == {MAR}
    assert set(train["as_of"].dt.date) == {JAN, FEB}
    assert len(train) + len(valid) == len(f)


def test_stratified_split_keeps_the_churn_rate_and_is_seeded():
    f = frame([JAN], users=400)
    plan = plan_validation([JAN])
    train, valid = split_frame(f, plan, fraction=0.25, seed=7)
    assert len(valid) == 100
    assert valid["churn_label"].mean() == pytest.approx(0.25)
    assert train["churn_label"].mean() == pytest.approx(0.25)
    again_train, again_valid = split_frame(f.sample(frac=1, random_state=3), plan, fraction=0.25, seed=7)
    assert list(again_valid["user_id"]) == list(valid["user_id"])  # input order does not matter
    _, other = split_frame(f, plan, fraction=0.25, seed=8)
    assert list(other["user_id"]) != list(valid["user_id"])


def test_a_split_with_one_class_in_validation_is_refused():
    f = frame([JAN, FEB])
    f.loc[f["as_of"].dt.date == FEB, "churn_label"] = False
    with pytest.raises(MLError, match="only one class"):
        split_frame(f, plan_validation([JAN, FEB]), fraction=0.25, seed=1)


def test_a_stratified_split_needs_both_classes():
    f = frame([JAN]).assign(churn_label=False)
    with pytest.raises(MLError, match="0 churners"):
        split_frame(f, plan_validation([JAN]), fraction=0.25, seed=1)


def test_digest_ignores_row_and_column_order_but_not_content():
    f = frame([JAN, FEB])
    shuffled = f.sample(frac=1, random_state=5)[list(reversed(f.columns))]
    assert frame_digest(shuffled) == frame_digest(f)
    changed = f.copy()
    changed.loc[3, "monthly_fee"] += 0.01
    assert frame_digest(changed) != frame_digest(f)
    relabelled = f.copy()
    relabelled.loc[0, "churn_label"] = not relabelled.loc[0, "churn_label"]
    assert frame_digest(relabelled) != frame_digest(f)
    assert len(frame_digest(f)) == 64
