"""One declaration of every name that several parts of the platform share.

The dbt project, the Feast repo, the model registry and the API all agree on these; change one
here and everything in Python follows (dbt and Feast files name them too: the tests check they agree).
"""

from __future__ import annotations

# --- warehouse schemas (dbt builds into these; see dbt_project/dbt_project.yml) ----------------
RAW_SCHEMA = "raw"
STAGING_SCHEMA = "staging"
SNAPSHOT_SCHEMA = "snapshots"
MART_SCHEMA = "marts"
ML_SCHEMA = "ml"
OPS_SCHEMA = "ops"

# --- marts -----------------------------------------------------------------------------------
FEATURE_MARTS = ("subscriptions_profile", "usage_agg_30d", "payments_agg_90d", "support_agg_90d")
"""The marts Feast reads, one feature view each, keyed by (user_id, as_of)."""
LABELS_MART = "labels"
MARTS = (*FEATURE_MARTS, LABELS_MART)
PERFORMANCE_MART = "model_performance"
"""Realized performance per scored month, role (champion, shadow) and model version, once labels arrive."""
CALIBRATION_MART = "model_calibration"
"""Predicted against realized churn per scored month, role, model version and risk decile."""
# raw table of the aggregated layout's labels: the outcomes of its own month end (period_start = as_of)
MONTH_END_LABELS = "labels_at_month_end"
SNAPSHOTS = ("snap_users", "snap_subscriptions")

# --- feature store ---------------------------------------------------------------------------
ENTITY = "user_id"
MODEL_SERVICE = "churn_model_v1"
"""The feature service holding exactly the model's inputs."""
ALL_SERVICE = "customer_360"
"""The feature service holding every feature, for product teams."""
PUSH_SOURCE = "usage_events"
PUSH_VIEW = "usage_realtime"
ONLINE_SCHEMA = "feast_online"

# --- database roles (ops/postgres/*.sql grant them) ------------------------------------------
API_ROLE = "streamflow_api"
"""The API's login: reads the online store, the registries and ops; writes the push tables only."""
ANALYST_ROLE = "analyst"
"""Analysts' login: reads marts and snapshots."""

# --- model registry --------------------------------------------------------------------------
MODEL_NAME = "streamflow_churn"
CHAMPION = "champion"
CHALLENGER = "challenger"
SHADOW = "shadow"
"""Registry alias of a model scored in shadow next to the champion."""

# --- tables the platform writes outside dbt --------------------------------------------------
CHURN_SCORES = f"{ML_SCHEMA}.churn_scores"
SHADOW_SCORES = f"{ML_SCHEMA}.shadow_scores"
"""A shadow model's probabilities next to the champion's (dbt macro ensure_shadow_scores_table)."""
SHADOW_SCORES_COLUMNS = (
    "user_id",
    "as_of",
    "champion_version",
    "champion_probability",
    "shadow_version",
    "shadow_probability",
    "source",
    "scored_at",
)
"""Its columns in table order (the API's upsert and `streamflow score` both write all of them)."""
