"""The built warehouse holds exactly what the drops say: marts value for value against an
independent pandas computation, and SCD2 snapshots version for version, in business time."""

from __future__ import annotations

import pandas as pd
import pytest

from streamflow.core.db import connect
from tests.conftest import WAREHOUSE_MONTHS
from tests.integration.dbt_reference import (
    PLAN_COLUMNS,
    PROFILE_COLUMNS,
    assert_frames_equal,
    expected_marts,
    expected_snapshot,
    read_drops,
    read_table,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def drops(session_drops):
    return read_drops(session_drops[:WAREHOUSE_MONTHS])


@pytest.fixture(scope="module")
def reference(drops):
    return expected_marts(drops)


@pytest.mark.parametrize("mart", ["subscriptions_profile", "usage_agg_30d", "payments_agg_90d", "support_agg_90d"])
def test_every_feature_mart_equals_an_independent_pandas_computation(built_warehouse, reference, mart):
    with connect(built_warehouse) as conn:
        actual = read_table(conn, f"marts.{mart}", "as_of, user_id")
    expected = reference[mart][list(actual.columns)]
    assert actual["as_of"].nunique() == WAREHOUSE_MONTHS
    assert_frames_equal(actual, expected, ["as_of", "user_id"])


def test_labels_mart_equals_the_labels_delivered_by_the_drops(built_warehouse, reference):
    with connect(built_warehouse) as conn:
        actual = read_table(conn, "marts.labels", "period_start, user_id")
    assert len(actual) > 0
    assert_frames_equal(actual, reference["labels"][list(actual.columns)], ["period_start", "user_id"])


def test_windows_are_non_trivial_in_the_test_data(reference):
    """Guards the comparisons above against vacuous zeros: the drops exercise every aggregate."""
    usage, pay, sup = reference["usage_agg_30d"], reference["payments_agg_90d"], reference["support_agg_90d"]
    assert (usage["watch_hours_30d"] > 0).mean() > 0.5 and (usage["watch_hours_30d"] == 0).any()
    assert (usage["rebuffer_events_7d"] > 0).any() and (usage["skips_7d"] > 0).any()
    assert (pay["failed_payments_90d"] > 0).any()
    assert (sup["support_tickets_90d"] > 0).any() and (sup["ticket_avg_resolution_hrs_90d"] > 0).any()


def _snapshot(conn, name: str, columns: list[str]) -> pd.DataFrame:
    cols = ", ".join(["user_id", *columns, "dbt_valid_from", "dbt_valid_to"])
    cur = conn.execute(f"select {cols} from snapshots.{name} order by user_id, dbt_valid_from")
    df = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
    if "monthly_fee" in df:
        df["monthly_fee"] = df["monthly_fee"].astype(float)
    for col in ("dbt_valid_from", "dbt_valid_to"):
        df[col] = pd.to_datetime(df[col], utc=True)
    return df


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    if "monthly_fee" in out:
        out["monthly_fee"] = out["monthly_fee"].astype(float).round(2)
    if "signup_date" in out:
        out["signup_date"] = out["signup_date"].astype(str)
    return out.astype(str).reset_index(drop=True)


@pytest.mark.parametrize(
    ("snapshot", "table", "columns"),
    [
        ("snap_subscriptions", "subscriptions", PLAN_COLUMNS),
        ("snap_users", "users", PROFILE_COLUMNS),
    ],
)
def test_snapshot_history_equals_the_drops_version_for_version(built_warehouse, drops, snapshot, table, columns):
    with connect(built_warehouse) as conn:
        actual = _snapshot(conn, snapshot, columns)
    expected = expected_snapshot(drops, table, columns)
    if "monthly_fee" in expected:
        expected["monthly_fee"] = expected["monthly_fee"].astype(float)
    assert _comparable(actual).equals(_comparable(expected))


def test_a_user_who_changed_plan_has_two_versions_with_business_time_validity(built_warehouse, drops):
    subs = drops.tables["subscriptions"]
    first, second = drops.months[0], drops.months[1]
    before = subs[subs.as_of == first].set_index("user_id")[PLAN_COLUMNS]
    after = subs[subs.as_of == second].set_index("user_id")[PLAN_COLUMNS]
    both = before.index.intersection(after.index)
    changed = [u for u in both if tuple(before.loc[u]) != tuple(after.loc[u])]
    assert changed, "the test drops should contain plan changes"
    user = changed[0]
    cols = ", ".join(PLAN_COLUMNS)
    with connect(built_warehouse) as conn:
        rows = conn.execute(
            f"select {cols}, dbt_valid_from, dbt_valid_to from snapshots.snap_subscriptions "
            "where user_id = %s and dbt_valid_from <= %s order by dbt_valid_from",
            (user, pd.Timestamp(second).tz_localize("UTC")),
        ).fetchall()
    assert len(rows) == 2
    old, new = rows
    n = len(PLAN_COLUMNS)
    at_first, at_second = pd.Timestamp(first).tz_localize("UTC"), pd.Timestamp(second).tz_localize("UTC")
    # the old plan from the first drop until the drop that shows the change, the new plan from then on
    assert old[n:] == (at_first, at_second)
    assert new[n] == at_second and (new[n + 1] is None or new[n + 1] > at_second)

    def as_text(values) -> list[str]:
        return [str(float(v)) if c == "monthly_fee" else str(v) for c, v in zip(PLAN_COLUMNS, values, strict=True)]

    assert as_text(old[:n]) == as_text(before.loc[user])
    assert as_text(new[:n]) == as_text(after.loc[user])
    # validity is the drop date at 00:00 UTC, never the time the build ran
    assert new[n].hour == 0 and new[n].minute == 0 and new[n].utcoffset().total_seconds() == 0


def test_a_cancelled_subscription_is_closed_at_the_first_drop_without_it(built_warehouse, drops):
    subs = drops.tables["subscriptions"]
    first, second = drops.months[0], drops.months[1]
    left = set(subs[subs.as_of == first].user_id) - set(subs[subs.as_of == second].user_id)
    assert left, "the test drops should contain cancellations"
    with connect(built_warehouse) as conn:
        rows = conn.execute(
            "select user_id, dbt_valid_from, dbt_valid_to from snapshots.snap_subscriptions "
            "where user_id = any(%s) order by user_id, dbt_valid_from",
            (sorted(left),),
        ).fetchall()
        in_profile = conn.execute(
            "select count(*) from marts.subscriptions_profile where user_id = any(%s) and as_of = %s",
            (sorted(left), pd.Timestamp(second).tz_localize("UTC")),
        ).fetchone()[0]
    closed_at = pd.Timestamp(second).tz_localize("UTC")
    first_versions = {}
    for user, valid_from, valid_to in rows:
        first_versions.setdefault(user, (valid_from, valid_to))
    assert set(first_versions) == left
    assert all(valid_to == closed_at for _, valid_to in first_versions.values())
    assert in_profile == 0
