"""Business time: parsing and validating months, month ends, and the newest month before another."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from streamflow.core.months import as_month, business_timestamp, is_month_end, month_end, parse_month, previous

JAN, FEB, MAR, APR = date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31), date(2024, 4, 30)


def test_a_month_is_given_as_its_last_day_or_as_year_and_month():
    assert parse_month("2024-02-29") == FEB
    assert parse_month("2024-02") == FEB
    assert parse_month(" 2024-04-30 ") == APR


@pytest.mark.parametrize(
    ("text", "hint"), [("2024-02-15", "did you mean 2024-02-29"), ("March", "YYYY-MM-DD"), ("2024-13-31", "YYYY-MM-DD")]
)
def test_what_is_not_a_month_end_is_refused_with_a_hint(text, hint):
    with pytest.raises(ValueError, match=hint):
        parse_month(text)


def test_month_ends_know_leap_years():
    assert month_end(date(2024, 2, 3)) == FEB
    assert month_end(date(2023, 2, 3)) == date(2023, 2, 28)
    assert is_month_end(FEB) and not is_month_end(date(2024, 2, 28))


def test_a_month_from_airflow_or_xcom_is_validated_whatever_its_type():
    assert as_month("2024-03-31") == MAR
    assert as_month(MAR) == MAR
    assert as_month(datetime(2024, 3, 31, tzinfo=UTC)) == MAR
    assert as_month("2024-03-31T00:00:00+00:00") == MAR
    with pytest.raises(ValueError, match="month end"):
        as_month(date(2024, 3, 30))


def test_a_month_rows_timestamp_is_midnight_utc_of_its_as_of():
    assert business_timestamp(MAR) == datetime(2024, 3, 31, tzinfo=UTC)


def test_the_month_before_is_the_newest_earlier_one():
    assert previous([JAN, MAR, FEB], APR) == MAR
    assert previous([JAN, MAR, FEB], MAR) == FEB
    assert previous([JAN, FEB], JAN) is None
