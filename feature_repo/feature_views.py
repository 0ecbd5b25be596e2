"""One feature view per dbt mart, plus the real-time usage view fed by pushes.

Feature names and types come from the marts' dbt contracts (target/manifest.json); nothing is
declared twice. TTL: a month-end value serves until the next month end plus a grace of a few days,
never longer, so a user who cancelled is not served last month's features as if they were current.
The longest gap between two month ends is 31 days; 31 + 4 days of grace = 35 days. Two month ends
are at least 59 days apart, so a value never reaches the month after next.
"""

from datetime import timedelta

from data_sources import (
    payments_agg_90d_source,
    subscriptions_profile_source,
    support_agg_90d_source,
    usage_agg_30d_source,
    usage_events,
)
from entities import user
from feast import FeatureView

from streamflow.core.names import PUSH_VIEW
from streamflow.features.contract import mart_fields, usage_event_fields

MONTH_END_TTL = timedelta(days=31 + 4)
REALTIME_TTL = timedelta(days=1)

subscriptions_profile = FeatureView(
    name="subscriptions_profile",
    entities=[user],
    ttl=MONTH_END_TTL,
    schema=mart_fields("subscriptions_profile"),
    source=subscriptions_profile_source,
    online=True,
    description="Profile and plan at the month end (dbt mart subscriptions_profile).",
    tags={"dbt_model": "subscriptions_profile"},
)

usage_agg_30d = FeatureView(
    name="usage_agg_30d",
    entities=[user],
    ttl=MONTH_END_TTL,
    schema=mart_fields("usage_agg_30d"),
    source=usage_agg_30d_source,
    online=True,
    description="Watch time, sessions, devices, skips and rebuffering (dbt mart usage_agg_30d).",
    tags={"dbt_model": "usage_agg_30d"},
)

payments_agg_90d = FeatureView(
    name="payments_agg_90d",
    entities=[user],
    ttl=MONTH_END_TTL,
    schema=mart_fields("payments_agg_90d"),
    source=payments_agg_90d_source,
    online=True,
    description="Failed payment attempts in 90 days (dbt mart payments_agg_90d).",
    tags={"dbt_model": "payments_agg_90d"},
)

support_agg_90d = FeatureView(
    name="support_agg_90d",
    entities=[user],
    ttl=MONTH_END_TTL,
    schema=mart_fields("support_agg_90d"),
    source=support_agg_90d_source,
    online=True,
    description="Support tickets and their resolution time in 90 days (dbt mart support_agg_90d).",
    tags={"dbt_model": "support_agg_90d"},
)

usage_realtime = FeatureView(
    name=PUSH_VIEW,
    entities=[user],
    ttl=REALTIME_TTL,
    schema=usage_event_fields(),
    source=usage_events,
    online=True,
    description="Usage pushed in real time between monthly runs: minutes watched today, last session start.",
    tags={"fed_by": "push"},
)
