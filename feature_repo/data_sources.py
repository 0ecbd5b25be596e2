"""Where features come from: one PostgreSQL source per dbt mart, and the push source of real-time usage.

Tables are named by the dbt manifest (schema.table of each contracted mart); every mart row carries
its business timestamp `as_of` (00:00 UTC of the month-end date).
"""

from feast import PushSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

from streamflow.core.names import PUSH_SOURCE
from streamflow.features.contract import (
    TIMESTAMP_COLUMN,
    USAGE_EVENT_SCHEMA,
    USAGE_EVENT_TABLE,
    USAGE_EVENT_TIMESTAMP,
    mart_table,
)

subscriptions_profile_source = PostgreSQLSource(
    name="subscriptions_profile_source",
    table=mart_table("subscriptions_profile"),
    timestamp_field=TIMESTAMP_COLUMN,
    description="dbt mart: profile and plan of every active subscriber at each month end.",
)

usage_agg_30d_source = PostgreSQLSource(
    name="usage_agg_30d_source",
    table=mart_table("usage_agg_30d"),
    timestamp_field=TIMESTAMP_COLUMN,
    description="dbt mart: viewing behaviour over the last 30 / 7 days at each month end.",
)

payments_agg_90d_source = PostgreSQLSource(
    name="payments_agg_90d_source",
    table=mart_table("payments_agg_90d"),
    timestamp_field=TIMESTAMP_COLUMN,
    description="dbt mart: failed payment attempts over the last 90 days at each month end.",
)

support_agg_90d_source = PostgreSQLSource(
    name="support_agg_90d_source",
    table=mart_table("support_agg_90d"),
    timestamp_field=TIMESTAMP_COLUMN,
    description="dbt mart: support tickets over the last 90 days at each month end.",
)

# Pushed events land online at once and in this table (their offline history).
usage_events_log = PostgreSQLSource(
    name="usage_events_log",
    table=f"{USAGE_EVENT_SCHEMA}.{USAGE_EVENT_TABLE}",
    timestamp_field=USAGE_EVENT_TIMESTAMP,
    description="Every real-time usage event pushed to usage_events, as pushed.",
)

usage_events = PushSource(
    name=PUSH_SOURCE,
    batch_source=usage_events_log,
    description="Real-time usage pushed between monthly runs (POST /events, streamflow.features.push).",
)
