"""Business time in the API: how a user's online values are judged against the business clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from streamflow.features.catalog import Catalog, ServiceLayout, rows_from_response
from streamflow.features.freshness import age_seconds, is_stale, judge

CLOCK = datetime(2024, 3, 31, tzinfo=UTC)
MONTH = timedelta(days=35)
DAY = timedelta(days=1)
FEATURES = {
    "profile": ("contract_type", "monthly_fee"),
    "usage": ("watch_hours_30d",),
    "realtime": ("watch_minutes_today",),
}
TTLS = {"profile": MONTH, "usage": MONTH, "realtime": DAY}


def test_a_value_exactly_its_ttl_old_is_current_and_one_second_older_is_stale():
    assert not is_stale(CLOCK - MONTH, CLOCK, MONTH)
    assert is_stale(CLOCK - MONTH - timedelta(seconds=1), CLOCK, MONTH)


def test_last_months_values_are_current_and_the_month_before_is_stale():
    feb, jan = datetime(2024, 2, 29, tzinfo=UTC), datetime(2024, 1, 31, tzinfo=UTC)
    assert not is_stale(feb, CLOCK, MONTH)
    assert is_stale(jan, CLOCK, MONTH)


def test_values_newer_than_the_business_clock_are_current_and_zero_days_old():
    pushed = CLOCK + timedelta(days=3, hours=20)  # an event between monthly runs
    assert not is_stale(pushed, CLOCK, DAY)
    assert age_seconds(pushed, CLOCK) == 0.0
    assert age_seconds(CLOCK - DAY, CLOCK) == 86400.0


def test_a_view_without_ttl_never_expires():
    assert not is_stale(datetime(2000, 1, 1, tzinfo=UTC), CLOCK, None)
    assert not is_stale(datetime(2000, 1, 1, tzinfo=UTC), CLOCK, timedelta(0))


def test_current_values_pass():
    verdict = judge({"profile": CLOCK, "usage": CLOCK, "realtime": None}, FEATURES, CLOCK, TTLS, {"realtime"})
    assert verdict.missing == () and not verdict.stale and not verdict.flagged


def test_a_missing_month_end_view_names_its_features_but_no_push_is_not_missing():
    verdict = judge({"profile": CLOCK, "usage": None, "realtime": None}, FEATURES, CLOCK, TTLS, {"realtime"})
    assert verdict.missing == ("watch_hours_30d",)
    unknown = judge({"profile": None, "usage": None, "realtime": None}, FEATURES, CLOCK, TTLS, {"realtime"})
    assert unknown.missing == ("contract_type", "monthly_fee", "watch_hours_30d")


def test_stale_month_end_values_are_refused_and_stale_pushes_only_flagged():
    old = CLOCK - timedelta(days=60)
    day_old_push = CLOCK - DAY - timedelta(hours=1)
    verdict = judge({"profile": old, "usage": CLOCK, "realtime": day_old_push}, FEATURES, CLOCK, TTLS, {"realtime"})
    assert dict(verdict.stale) == {"profile": old}
    assert dict(verdict.flagged) == {"realtime": day_old_push}
    assert verdict.missing == ()


def test_rows_from_feasts_response_judge_each_user_and_date_derived_values_by_their_oldest_source():
    pairs = (("profile", "monthly_fee"), ("usage", "watch_hours_30d"), ("ratios", "watch_hours_per_fee"))
    layout = ServiceLayout(
        name="svc",
        service=None,
        pairs=pairs,
        stored=("profile", "usage"),
        derived={"ratios": ("profile", "usage")},
        timestamp_key={"profile": "monthly_fee__ts", "usage": "watch_hours_30d__ts"},
        features_of={
            "profile": ("monthly_fee", "watch_hours_per_fee"),
            "usage": ("watch_hours_30d", "watch_hours_per_fee"),
            "ratios": ("watch_hours_per_fee",),
        },
    )
    catalog = Catalog(
        services={"svc": layout}, ttls={"profile": MONTH, "usage": MONTH}, pushed=frozenset(), clock=CLOCK, read_at=0.0
    )
    feb = datetime(2024, 2, 29, tzinfo=UTC)
    data = {
        "monthly_fee": [70.0, None, 50.0],
        "watch_hours_30d": [10.0, None, 5.0],
        "watch_hours_per_fee": [1 / 7, None, 0.1],
        "monthly_fee__ts": [int(CLOCK.timestamp()), 0, int(datetime(2024, 1, 31, tzinfo=UTC).timestamp())],
        "watch_hours_30d__ts": [int(feb.timestamp()), 0, int(CLOCK.timestamp())],
    }
    known, unknown, stale = rows_from_response(data, ["1111-AAAAA", "2222-BBBBB", "3333-CCCCC"], layout, catalog)
    assert known.found and known.as_of == {"profile": CLOCK, "usage": feb, "ratios": feb}
    assert known.oldest == feb and known.values["watch_hours_per_fee"] == 1 / 7
    assert not unknown.found and unknown.verdict.missing == ("monthly_fee", "watch_hours_per_fee", "watch_hours_30d")
    assert stale.found and set(stale.verdict.stale) == {"profile"}
