"""Training frames: features joined point-in-time with Feast (``get_historical_features``)."""

from __future__ import annotations

from datetime import date

import pandas as pd

from streamflow.core.db import connect
from streamflow.core.names import ENTITY, MODEL_SERVICE
from streamflow.core.settings import Settings
from streamflow.features import contract as fc
from streamflow.features.apply import _relation
from streamflow.features.materialize import active_users, built_months
from streamflow.features.store import (
    ENTITY_TS,
    FeaturesError,
    _errors,
    _require_applied,
    _service,
    _silenced,
    _sql_ts,
    business_timestamp,
    feature_store,
    service_features,
)


# ---------------------------------------------------------------------------------------
# offline: point-in-time frames
# ---------------------------------------------------------------------------------------
def historical_features(settings: Settings, entities: str | pd.DataFrame, service: str = MODEL_SERVICE) -> pd.DataFrame:
    """Feast's point-in-time join of a service's features onto entity rows.

    ``entities``: a SQL query or a DataFrame with ``user_id`` and ``event_timestamp`` (extra columns
    are passed through). For each row and feature view, the view's latest value with as_of at or
    before the row's timestamp and not older than the view's TTL; NULL when there is none.
    Feature columns carry plain feature names.
    """
    store = feature_store(settings)
    with _errors(settings, "retrieving historical features"):
        _require_applied(store)
        fs = _service(store, service)
        with _silenced():
            frame = store.get_historical_features(entity_df=entities, features=fs).to_df()
    return frame


def _frame(raw: pd.DataFrame, features: list[str], lead: list[str]) -> pd.DataFrame:
    """Columns in contract order, as_of tz-aware UTC, rows by (as_of, user_id)."""

    out = raw.rename(columns={ENTITY_TS: "as_of"})
    out["as_of"] = pd.to_datetime(out["as_of"], utc=True)
    out = out[lead + features]
    return out.sort_values(["as_of", ENTITY], kind="mergesort").reset_index(drop=True)


def training_frame(settings: Settings, periods: list[date], service: str = MODEL_SERVICE) -> pd.DataFrame:
    """The training set of the label periods: one row per user with a label for period_start P.

    Columns: user_id, as_of (= P, UTC), churn_label (bool), then the service's features as of P,
    joined point-in-time by Feast.
    """

    if not periods:
        raise FeaturesError("no label period given")
    periods = sorted(set(periods))
    labels = _relation(settings, "labels")
    stamps = [business_timestamp(p) for p in periods]
    with _errors(settings, "reading the labels"), connect(settings) as conn:
        have = {
            r[0]
            for r in conn.execute(
                f"select distinct (period_start at time zone 'UTC')::date from {labels} where period_start = any(%s)",
                (stamps,),
            )
        }
        known = [
            r[0]
            for r in conn.execute(f"select distinct (period_start at time zone 'UTC')::date from {labels} order by 1")
        ]
    missing = [p for p in periods if p not in have]
    if missing:
        raise FeaturesError(
            f"no labels for period(s) {', '.join(p.isoformat() for p in missing)}; labelled periods: "
            f"{', '.join(p.isoformat() for p in known) or 'none'} (a period's labels arrive with the "
            "next month's drop)"
        )
    entity_sql = (
        f"select {ENTITY}, period_start as {ENTITY_TS}, churn_label from {labels} "
        f"where period_start in ({', '.join(_sql_ts(s) for s in stamps)})"
    )
    features = [name for _v, name in service_features(settings, service)]
    frame = _frame(historical_features(settings, entity_sql, service), features, [ENTITY, "as_of", "churn_label"])
    frame["churn_label"] = frame["churn_label"].astype(bool)
    return frame


def feature_frame(settings: Settings, as_of: date, service: str = MODEL_SERVICE) -> pd.DataFrame:
    """The service's features of every user active at as_of (user_id, as_of, features): for batch
    scoring and drift."""
    relation = _relation(settings, "subscriptions_profile")
    if not active_users(settings, as_of):
        months = ", ".join(d.isoformat() for d in built_months(settings)) or "none"
        raise FeaturesError(f"the marts hold no month {as_of} (built months: {months})")
    ts = business_timestamp(as_of)
    entity_sql = (
        f"select {ENTITY}, {fc.TIMESTAMP_COLUMN} as {ENTITY_TS} from {relation} "
        f"where {fc.TIMESTAMP_COLUMN} = {_sql_ts(ts)}"
    )
    features = [name for _v, name in service_features(settings, service)]
    return _frame(historical_features(settings, entity_sql, service), features, [ENTITY, "as_of"])
