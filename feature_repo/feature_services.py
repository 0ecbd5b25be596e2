"""What each consumer reads: the churn model's exact inputs, and everything for product teams."""

from feast import FeatureService
from feature_views import payments_agg_90d, subscriptions_profile, support_agg_90d, usage_agg_30d, usage_realtime
from on_demand import derived_ratios

from streamflow.core.names import ALL_SERVICE, MODEL_NAME, MODEL_SERVICE

# Gender is a profile attribute product teams see, but it is not a model input.
NOT_MODEL_INPUTS = {"gender"}

churn_model_v1 = FeatureService(
    name=MODEL_SERVICE,
    features=[
        subscriptions_profile[[f.name for f in subscriptions_profile.features if f.name not in NOT_MODEL_INPUTS]],
        usage_agg_30d,
        payments_agg_90d,
        support_agg_90d,
        derived_ratios,
    ],
    description=f"Exactly the inputs of the churn model (MLflow model {MODEL_NAME}), in this order.",
    tags={"model": MODEL_NAME},
)

customer_360 = FeatureService(
    name=ALL_SERVICE,
    features=[
        subscriptions_profile,
        usage_agg_30d,
        payments_agg_90d,
        support_agg_90d,
        usage_realtime,
        derived_ratios,
    ],
    description="Every feature of a subscriber, for product teams (GET /features/{user_id}).",
)
