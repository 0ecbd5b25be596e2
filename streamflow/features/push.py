"""Real-time usage pushes: a user's usage online at once (the ``usage_realtime`` view), and recorded offline.

The API pushes through its :class:`streamflow.features.online.OnlineReader`, which passes the Feast store it
reads with; library callers get the platform's shared store of their settings.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
import psycopg
from feast import FeatureStore
from feast.data_source import PushMode
from feast.online_response import TIMESTAMP_POSTFIX

from streamflow.core.db import connect
from streamflow.core.names import ENTITY, PUSH_SOURCE, PUSH_VIEW
from streamflow.core.settings import Settings
from streamflow.drops.contract import ID_RE
from streamflow.features import contract as fc
from streamflow.features.store import FeaturesError, _errors, feature_store


# ---------------------------------------------------------------------------------------
# push: real-time usage
# ---------------------------------------------------------------------------------------
@dataclass
class PushResult:
    user_id: str
    event_time: datetime
    online: bool  # False: a newer event is already online (the offline history still records it)


def _utc(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise FeaturesError(f"{what} must be a datetime, got {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def push_usage_event(
    settings: Settings,
    user_id: str,
    *,
    watch_minutes_today: float,
    last_session_at: datetime,
    event_time: datetime | None = None,
    store: FeatureStore | None = None,
    conn: psycopg.Connection | None = None,
) -> PushResult:
    """Push one user's real-time usage: online at once (usage_realtime), and into its offline table.

    ``event_time`` defaults to ``last_session_at`` (the event's own business time, not the wall clock).
    Pushes are ONLINE_AND_OFFLINE in effect: Feast's PostgreSQL offline store cannot write, so the row
    goes to the push source's table here, in the same transaction as the online write. An event older
    than the one online is recorded offline only. ``store``: the Feast store to read and push with (default:
    the shared store of ``settings``). ``conn``: a warehouse connection to record the offline row with, kept
    open by the caller (default: a new one for this event).
    """
    if not isinstance(user_id, str) or not ID_RE.match(user_id):
        raise FeaturesError(f"{user_id!r} is not a user id (4 digits, a dash, 5 capitals: 7590-VHVEG)")
    try:
        minutes = float(watch_minutes_today)
    except (TypeError, ValueError):
        raise FeaturesError(f"watch_minutes_today must be a number, got {watch_minutes_today!r}") from None
    if not math.isfinite(minutes) or not 0 <= minutes <= 24 * 60:
        raise FeaturesError(f"watch_minutes_today must be between 0 and 1440, got {watch_minutes_today!r}")
    session = _utc(last_session_at, "last_session_at")
    when = _utc(event_time, "event_time") if event_time is not None else session
    row = {ENTITY: user_id, fc.USAGE_EVENT_TIMESTAMP: when, "watch_minutes_today": minutes, "last_session_at": session}
    store = store if store is not None else feature_store(settings)
    table = f"{fc.USAGE_EVENT_SCHEMA}.{fc.USAGE_EVENT_TABLE}"
    columns = [c for c, _t in fc.USAGE_EVENT_COLUMNS]
    kept = contextlib.nullcontext(conn) if conn is not None else connect(settings)
    # the offline row commits only once the online write is done
    with _errors(settings, "pushing a usage event"), kept as c, c.transaction():
        c.execute(
            f"insert into {table} ({', '.join(columns)}) values ({', '.join(['%s'] * len(columns))})",
            [row[col] for col in columns],
        )
        current = _online_event_time(store, user_id)
        online = current is None or when >= current
        if online:
            frame = pd.DataFrame([row])
            for col in (fc.USAGE_EVENT_TIMESTAMP, "last_session_at"):
                frame[col] = pd.to_datetime(frame[col], utc=True)
            store.push(PUSH_SOURCE, frame, to=PushMode.ONLINE)
    return PushResult(user_id=user_id, event_time=when, online=online)


def _online_event_time(store: FeatureStore, user_id: str) -> datetime | None:
    """Event time of the user's pushed usage online, None when there is none."""

    view = store.get_feature_view(PUSH_VIEW)
    ref = f"{PUSH_VIEW}:{view.features[0].name}"
    data = store.get_online_features(features=[ref], entity_rows=[{ENTITY: user_id}]).to_dict(
        include_event_timestamps=True
    )
    seconds = data[view.features[0].name + TIMESTAMP_POSTFIX][0]
    return datetime.fromtimestamp(seconds, tz=UTC) if seconds else None
