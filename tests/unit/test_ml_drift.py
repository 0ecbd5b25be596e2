"""The drift decision and the reading of an Evidently 0.7 report (its `Snapshot.dict()` layout)."""

from __future__ import annotations

import pytest

from ml.drift import drift_decision, summarize
from ml.errors import MLError


def value_drift(column, score, method="Wasserstein distance (normed)", threshold=0.1):
    return {
        "id": f"id-{column}",
        "metric_name": f"ValueDrift(column={column},method={method},threshold={threshold})",
        "config": {
            "type": "evidently:metric_v2:ValueDrift",
            "column": column,
            "method": method,
            "threshold": threshold,
        },
        "value": score,
    }


def drift_test(column, status):
    return {
        "id": "drift",
        "name": f"Value Drift for column {column}",
        "metric_config": {
            "metric_id": f"id-{column}",
            "params": {"type": "evidently:metric_v2:ValueDrift", "column": column},
        },
        "status": status,
    }


REPORT = {
    "metrics": [
        {
            "id": "count",
            "config": {"type": "evidently:metric_v2:DriftedColumnsCount", "drift_share": 0.3},
            "value": {"count": 2.0, "share": 0.5},
        },
        value_drift("watch_hours_30d", 0.42),
        value_drift("monthly_fee", 0.15),
        value_drift("contract_type", 0.01, method="Jensen-Shannon distance"),
        value_drift("skips_7d", 0.02),
    ],
    "tests": [
        {
            "id": "lt",
            "metric_config": {"params": {"type": "evidently:metric_v2:DriftedColumnsCount"}},
            "status": "FAIL",
        },
        drift_test("watch_hours_30d", "FAIL"),
        drift_test("monthly_fee", "FAIL"),
        drift_test("contract_type", "SUCCESS"),
        drift_test("skips_7d", "SUCCESS"),
    ],
}


def test_summary_reads_count_share_and_each_column():
    count, share, columns = summarize(REPORT)
    assert (count, share) == (2, 0.5)
    by_name = {c.column: c for c in columns}
    assert set(by_name) == {"watch_hours_30d", "monthly_fee", "contract_type", "skips_7d"}
    assert by_name["watch_hours_30d"].drifted and by_name["monthly_fee"].drifted
    assert not by_name["contract_type"].drifted
    assert by_name["contract_type"].method == "Jensen-Shannon distance"
    assert by_name["watch_hours_30d"].score == 0.42 and by_name["watch_hours_30d"].threshold == 0.1


def test_a_report_without_the_drift_count_is_refused():
    with pytest.raises(MLError, match="drifted-columns count"):
        summarize({"metrics": [value_drift("a", 0.5)], "tests": []})


@pytest.mark.parametrize(
    ("share", "threshold", "retrain"),
    [
        (0.0, 0.3, False),
        (0.29, 0.3, False),
        (0.3, 0.3, True),
        (0.75, 0.3, True),
        (0.5, 0.6, False),
        (3 / 10, 0.3, True),  # 0.30000000000000004 is still exactly the threshold
    ],
)
def test_retrain_when_the_drifted_share_reaches_the_threshold(share, threshold, retrain):
    assert drift_decision(share, threshold) is retrain
