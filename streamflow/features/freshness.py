"""The one staleness rule of online features: values judged in business time.

Staleness is measured against the business clock (the newest month materialized, read from the Feast
registry), never the wall clock. A view's value is stale when its as_of is more than the view's TTL
before the clock. Stale month-end views are refused (the API answers 409); values pushed in real time
(views fed by a PushSource, TTL one day) follow the same rule but are only flagged, because they are
never model inputs: a push newer than the clock is current, one older than the clock minus a day has
been superseded by the monthly data.

Every online read (the API, ``streamflow features get``, the tests) is judged here, through
:mod:`streamflow.features.online`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from streamflow.core.months import business_timestamp, month_end


def is_stale(as_of: datetime, clock: datetime, ttl: timedelta | None) -> bool:
    """True when a value is older than its view's TTL at the business clock (a TTL of 0 or None never expires).
    A value exactly TTL old is still current; a value newer than the clock is current."""
    if not ttl:
        return False
    return as_of < clock - ttl


def latest_push_time(clock: datetime, ttl: timedelta | None) -> datetime:
    """The latest business time a pushed event may carry at the business ``clock``: events happen during the
    month after the newest materialized one, so the end of that month (its last day included) plus the pushed
    view's TTL. Later ones are beyond the business clock (a wall-clock timestamp, a wrong year) and refused."""
    following = month_end(clock.date() + timedelta(days=1))
    return business_timestamp(following + timedelta(days=1)) + (ttl or timedelta(0))


def age_seconds(as_of: datetime, clock: datetime) -> float:
    """Business-time age of a value; 0 for a value newer than the clock (a push between monthly runs)."""
    return max((clock - as_of).total_seconds(), 0.0)


@dataclass(frozen=True)
class Verdict:
    """What a user's online values allow: missing features (404), refused stale views (409), flagged views."""

    missing: tuple[str, ...] = ()  # features whose (non-pushed) view has no value for the user
    stale: Mapping[str, datetime] = field(default_factory=dict)  # view -> as_of, refused
    flagged: Mapping[str, datetime] = field(default_factory=dict)  # pushed view -> as_of, served marked stale


def judge(
    as_of: Mapping[str, datetime | None],
    features_of: Mapping[str, Iterable[str]],
    clock: datetime,
    ttls: Mapping[str, timedelta | None],
    pushed: Iterable[str] = (),
) -> Verdict:
    """Decide on one user's values: ``as_of`` per stored view (None: no value), ``features_of`` per view.

    A pushed view with no value is not missing (most users never pushed anything); a month-end view with
    no value makes its features missing. Stale month-end views are refused, stale pushed views flagged.
    """
    pushed = set(pushed)
    missing: list[str] = []
    stale: dict[str, datetime] = {}
    flagged: dict[str, datetime] = {}
    for view, ts in as_of.items():
        if ts is None:
            if view not in pushed:
                missing.extend(features_of.get(view, ()))
            continue
        if is_stale(ts, clock, ttls.get(view)):
            (flagged if view in pushed else stale)[view] = ts
    return Verdict(tuple(dict.fromkeys(missing)), stale, flagged)
