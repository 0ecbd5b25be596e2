"""Business time: the one home of months.

Everything in the platform is dated by the drop's ``as_of``, the last day of its month. This module
parses and validates months, computes month ends, and answers which months are loaded, built and
labelled, from the run logs the steps write (``raw.load_log`` when a drop is loaded, the month log
``ops.month_log`` as each later step completes) and never from a mart's contents, so a half-built
month stays invisible to every consumer. (Which month the online store serves, the business clock, is in
the run log as well: ``ops.online_served``, read by ``streamflow.features.store.business_clock``.)
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime

from streamflow.core import runlog
from streamflow.core.names import MONTH_END_LABELS
from streamflow.core.settings import Settings

BUILD_LOG_TABLE = "dbt_build_log"
"""The dbt build log: one row per drop month the snapshots and marts hold (schema: the dbt target schema)."""


def month_end(day: date) -> date:
    """The last day of ``day``'s month."""
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def is_month_end(day: date) -> bool:
    return day == month_end(day)


def parse_month(text: str) -> date:
    """An as_of from ``YYYY-MM-DD`` (a month's last day) or ``YYYY-MM`` (that month's last day).

    Raises ValueError with a message a user can act on.
    """
    text = str(text).strip()
    try:
        if len(text) == 7:
            return month_end(date.fromisoformat(text + "-01"))
        day = date.fromisoformat(text[:10])
    except ValueError:
        raise ValueError(f"{text!r} is not a date: use YYYY-MM-DD (a month's last day, e.g. 2024-03-31)") from None
    if not is_month_end(day):
        raise ValueError(f"{text} is not a month end: an as_of is a month's last day (did you mean {month_end(day)}?)")
    return day


def as_month(value: str | date | datetime) -> date:
    """A month given as a date, a datetime or text (what Airflow params and XComs carry), validated."""
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, date):
        if not is_month_end(value):
            raise ValueError(f"{value} is not a month end: an as_of is a month's last day")
        return value
    return parse_month(value)


def business_timestamp(as_of: date) -> datetime:
    """The timestamp of a month's mart rows (Feast's event time): 00:00 UTC of its as_of date."""
    return datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC)


def previous(months: list[date], as_of: date) -> date | None:
    """The newest of ``months`` before ``as_of``."""
    earlier = [m for m in months if m < as_of]
    return max(earlier) if earlier else None


# ---------------------------------------------------------------------------------------
# what the run logs say
# ---------------------------------------------------------------------------------------
def _exists(conn, relation: str) -> bool:
    return conn.execute("select to_regclass(%s)", (relation,)).fetchone()[0] is not None


def build_log(settings: Settings) -> str:
    """The qualified name of the dbt build log."""
    return f'"{settings.dbt_target_schema}".{BUILD_LOG_TABLE}'


def loaded_months(conn) -> list[date]:
    """Every month whose drop is loaded (raw.load_log), oldest first."""
    if not _exists(conn, "raw.load_log"):
        return []
    return [r[0] for r in conn.execute("select as_of from raw.load_log order by as_of")]


def loaded_manifests(conn) -> dict[date, str]:
    """{as_of: sha256 of the manifest} of every loaded drop: which version of each month is loaded."""
    if not _exists(conn, "raw.load_log"):
        return {}
    return dict(conn.execute("select as_of, manifest_sha256 from raw.load_log order by as_of").fetchall())


def months_in(conn, settings: Settings, state: str) -> list[date]:
    """Every month whose ``state`` step (see :data:`streamflow.core.runlog.STATES`) has completed, oldest
    first, from the month log."""
    runlog.ensure_month_log(conn, build_log(settings))
    return runlog.months_in(conn, state)


def built_months(conn, settings: Settings) -> list[date]:
    """Every month whose snapshots and marts are completely built, oldest first."""
    return months_in(conn, settings, "built")


def labelled_periods(conn, settings: Settings) -> list[date]:
    """Every period whose labels are built, oldest first: drop M carries the labels of period_start = the
    loaded month before M, so a period is labelled once a later month with a non-empty labels file is built;
    a month of the aggregated layout carries the outcomes of its own month end."""
    if not _exists(conn, "raw.load_log"):
        return []
    found = conn.execute(
        "select as_of, (files -> 'labels' ->> 'rows')::bigint, (files -> %s ->> 'rows')::bigint from raw.load_log",
        (MONTH_END_LABELS,),
    ).fetchall()
    rows = {as_of: n for as_of, n, _ in found}
    own = {as_of: n for as_of, _, n in found}  # the aggregated layout: outcomes of the month itself
    loaded = sorted(rows)
    periods = set()
    for month in built_months(conn, settings):
        before = previous(loaded, month)
        if before is not None and (rows.get(month) or 0) > 0:
            periods.add(before)
        if (own.get(month) or 0) > 0:
            periods.add(month)
    return sorted(periods)
