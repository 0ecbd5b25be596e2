"""Request and response bodies of the API. Every one carries an example, so /docs is usable as is."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from streamflow.drops.contract import ID_PATTERN

EXAMPLE_USER = "5575-GNVDE"  # active in the demo's last month: /docs' "Try it out" answers 200 after `make demo`
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)  # event times the stores can hold (epoch seconds, pandas timestamps)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
EXAMPLE_AS_OF = "2024-04-30T00:00:00Z"
UserId = Field(
    pattern=ID_PATTERN, description="A user id like 7590-VHVEG (4 digits, dash, 5 capitals).", examples=[EXAMPLE_USER]
)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"user_id": EXAMPLE_USER}]})
    user_id: str = UserId


class BatchPredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"user_ids": [EXAMPLE_USER, "7795-CFOCW"]}]},
    )
    user_ids: list[str] = Field(
        min_length=1,
        description="User ids like 7590-VHVEG, up to the configured batch limit (STREAMFLOW_BATCH_LIMIT; "
        "more is refused with 413). One online read serves the whole batch.",
    )


class FeatureValue(BaseModel):
    value: Any = Field(description="The feature's value as served.")
    feature_view: str = Field(description="Feast feature view the value comes from.")
    as_of: datetime | None = Field(
        description="Business time of the value (the month end it describes, or the "
        "event time of a pushed value); derived features carry their oldest source's."
    )
    stale: bool = Field(
        default=False,
        description="True for a pushed real-time value older than its view's TTL "
        "at the business clock: shown, never used for scoring.",
    )


class Reason(BaseModel):
    feature: str = Field(description="A model input.")
    label: str = Field(description="What the feature means, from the dbt docs of its mart column.")
    value: Any = Field(description="The feature's value as served (the exact value scored).")
    contribution: float = Field(
        description="How much this value moves the user's churn log-odds away from the base: > 0 pushes the "
        "risk up, < 0 holds it down."
    )


class Reasons(BaseModel):
    base: float = Field(
        description="The model's log-odds before any feature speaks: an average subscriber's (the training "
        "means for logistic regression, the trees' expected values for gradient boosting)."
    )
    margin: float = Field(
        description="This user's log-odds: base plus the contributions of every feature (not only those listed); "
        "churn_probability = 1 / (1 + exp(-margin))."
    )
    up: list[Reason] = Field(description="The features that push this user's churn risk up the most, largest first.")
    down: list[Reason] = Field(description="The features that hold it down the most, largest first.")


EXAMPLE_REASONS = {
    "base": -0.21,
    "margin": 0.99,
    "up": [
        {"feature": "contract_type", "label": "Contract type", "value": "Month-to-month", "contribution": 0.84},
        {
            "feature": "watch_hours_30d",
            "label": "Hours watched in the last 30 days (minutes / 60)",
            "value": 3.5,
            "contribution": 0.52,
        },
    ],
    "down": [
        {
            "feature": "months_active",
            "label": "Months the customer has been subscribed, as of the drop (tenure)",
            "value": 41,
            "contribution": -0.31,
        }
    ],
}


class Prediction(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": EXAMPLE_USER,
                    "churn_probability": 0.73,
                    "churn": True,
                    "threshold": 0.41,
                    "model_version": "3",
                    "features_as_of": EXAMPLE_AS_OF,
                    "features": {
                        "contract_type": {
                            "value": "Month-to-month",
                            "feature_view": "subscriptions_profile",
                            "as_of": EXAMPLE_AS_OF,
                            "stale": False,
                        },
                        "watch_hours_30d": {
                            "value": 3.5,
                            "feature_view": "usage_agg_30d",
                            "as_of": EXAMPLE_AS_OF,
                            "stale": False,
                        },
                    },
                    "reasons": EXAMPLE_REASONS,
                }
            ]
        }
    )
    user_id: str
    churn_probability: float = Field(ge=0.0, le=1.0, description="Probability of cancelling before next month end.")
    churn: bool = Field(description="churn_probability >= the model's logged decision threshold.")
    threshold: float = Field(description="The decision threshold of the serving model.")
    model_version: str = Field(description="Registry version of the model that answered.")
    features_as_of: datetime | None = Field(description="Business time of the features used (oldest view).")
    features: dict[str, FeatureValue] = Field(description="The model's inputs as served, with their as_of.")
    reasons: Reasons | None = Field(
        default=None,
        description="Why: the features that push this user's risk up and hold it down the most (?reasons=N per "
        "direction, default 3); null with ?reasons=0 or when the model has no exact decomposition.",
    )


class StaleView(BaseModel):
    feature_view: str
    as_of: datetime = Field(description="Business time of the user's values in this view.")
    ttl_seconds: float = Field(description="The view's TTL: how long past its as_of a value may be served.")
    age_seconds: float = Field(description="Age of the values at the business clock.")
    features: list[str]


class UnknownUser(BaseModel):
    """404: the online store holds no current values of these features for the user."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "detail": "user 0000-AAAAA has no online features: not an active subscriber at the business "
                    "clock 2024-04-30, or an unknown id",
                    "user_id": "0000-AAAAA",
                    "missing_features": ["contract_type", "monthly_fee", "watch_hours_30d"],
                }
            ]
        }
    )
    detail: str
    user_id: str
    missing_features: list[str]


class StaleFeatures(BaseModel):
    """409: the user's values are older than their views' TTL at the business clock; they are not scored."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "detail": "features of user 5575-GNVDE are older than their TTL at the business clock "
                    "2024-04-30: refused, not scored",
                    "user_id": EXAMPLE_USER,
                    "business_clock": EXAMPLE_AS_OF,
                    "stale": [
                        {
                            "feature_view": "usage_agg_30d",
                            "as_of": "2024-02-29T00:00:00Z",
                            "ttl_seconds": 3024000.0,
                            "age_seconds": 5184000.0,
                            "features": ["watch_hours_30d", "avg_session_mins_7d"],
                        }
                    ],
                }
            ]
        }
    )
    detail: str
    user_id: str
    business_clock: datetime
    stale: list[StaleView]


class Unavailable(BaseModel):
    """503: a backing store or the model registry does not answer; retry later (the service recovers by itself)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "detail": "the online store did not answer while reading online features; retry shortly",
                    "store": "online",
                }
            ]
        }
    )
    detail: str
    store: str = Field(description="online, feature_registry or registry (the model registry).")


class BatchItemError(BaseModel):
    user_id: str
    status: int = Field(description="What /predict would have answered for this user (404 or 409).")
    detail: str
    missing_features: list[str] | None = None
    stale: list[StaleView] | None = None


class BatchPrediction(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_version": "3",
                    "predictions": [],
                    "errors": [
                        {
                            "user_id": "0000-AAAAA",
                            "status": 404,
                            "detail": "unknown user",
                            "missing_features": ["contract_type"],
                        }
                    ],
                }
            ]
        }
    )
    model_version: str
    predictions: list[Prediction]
    errors: list[BatchItemError]


class UserFeatures(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": EXAMPLE_USER,
                    "service": "customer_360",
                    "business_clock": EXAMPLE_AS_OF,
                    "features": {
                        "monthly_fee": {
                            "value": 29.85,
                            "feature_view": "subscriptions_profile",
                            "as_of": EXAMPLE_AS_OF,
                            "stale": False,
                        }
                    },
                }
            ]
        }
    )
    user_id: str
    service: str
    business_clock: datetime = Field(description="The newest month materialized: staleness is judged against it.")
    features: dict[str, FeatureValue]


class UsageEvent(BaseModel):
    """A real-time usage event pushed between monthly runs."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"user_id": EXAMPLE_USER, "watch_minutes_today": 42.5, "last_session_at": "2024-05-02T20:15:00Z"}
            ]
        },
    )
    user_id: str = UserId
    watch_minutes_today: float = Field(
        ge=0, le=24 * 60, allow_inf_nan=False, description="Minutes watched so far today."
    )
    last_session_at: AwareDatetime = Field(
        description="Start of the user's latest session (ISO 8601, with zone; years 1970 to 2199)."
    )
    event_time: AwareDatetime | None = Field(
        default=None,
        description="Business time of the event (ISO 8601, with zone; years 1970 to 2199). Default: last_session_at.",
    )

    @field_validator("last_session_at", "event_time")
    @classmethod
    def _in_range(cls, value: datetime | None) -> datetime | None:
        if value is not None and not EARLIEST <= value < LATEST:
            raise ValueError("must be between 1970-01-01 and 2199-12-31 (UTC)")
        return value


class EventAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"user_id": EXAMPLE_USER, "accepted": True, "online": True, "event_time": "2024-05-02T20:15:00Z"}
            ]
        }
    )
    user_id: str
    accepted: bool
    online: bool = Field(description="False when a newer event was already online: this one is recorded offline only.")
    event_time: datetime


class ShadowInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    version: str = Field(description="Registry version scored in shadow.")
    alias: str = Field(description="shadow (the alias), or challenger (a challenger the gate did not promote).")
    run_id: str
    trained_as_of: date | None
    registered_at: datetime | None = None
    scorer: str = Field(description="How the shadow is scored (as `scorer` of the serving model).")


class ModelInfo(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "name": "streamflow_churn",
                    "version": "3",
                    "alias": "champion",
                    "run_id": "9f1c0d4e",
                    "trained_as_of": "2024-04-30",
                    "threshold": 0.41,
                    "metrics": {"roc_auc": 0.84, "log_loss": 0.41},
                    "features": ["contract_type", "watch_hours_30d"],
                    "registered_at": "2024-05-01T06:12:00Z",
                    "scorer": "compiled",
                    "shadow": {
                        "version": "4",
                        "alias": "challenger",
                        "run_id": "0b7e55aa",
                        "trained_as_of": "2024-05-31",
                        "registered_at": "2024-06-01T06:10:00Z",
                        "scorer": "compiled",
                    },
                }
            ]
        },
    )
    name: str
    version: str
    alias: str
    run_id: str
    trained_as_of: date | None
    threshold: float
    metrics: dict[str, float]
    features: list[str]
    registered_at: datetime | None = Field(default=None, description="When this version was registered.")
    scorer: str = Field(
        description="How predictions are computed: compiled (numpy, checked equal to the "
        "pipeline at load), encoded (the classifier on look-up encoded rows) or pipeline."
    )
    shadow: ShadowInfo | None = Field(
        default=None,
        description="The model scored in shadow off the request path into ml.shadow_scores (never in answers); "
        "null when there is none or STREAMFLOW_SHADOW is off.",
    )


class ModelReload(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"changed": True, "version": "4", "registry": True, "detail": None}]}
    )
    changed: bool = Field(description="True when the alias pointed at another version, now serving.")
    version: str | None
    registry: bool = Field(description="False when the registry did not answer (the current model keeps serving).")
    detail: str | None = None


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})
    status: str


class ModelLoadFailure(BaseModel):
    version: str = Field(description="The registry version the alias points at that is not served.")
    reason: str = Field(description="Why: the load error, or the features the service does not serve.")
    at: datetime = Field(description="When the last attempt failed (wall clock, UTC).")


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "ready": True,
                    "model_loaded": True,
                    "online_store": True,
                    "registry": True,
                    "model_version": "3",
                    "business_clock": EXAMPLE_AS_OF,
                    "detail": {},
                }
            ]
        }
    )
    ready: bool = Field(description="model_loaded and online_store: the service can answer predictions.")
    model_loaded: bool
    online_store: bool = Field(description="The online store answered just now and holds a materialized month.")
    registry: bool = Field(
        description="The last poll of the model registry succeeded (informative: a loaded model "
        "keeps serving while the registry is away)."
    )
    model_version: str | None = None
    shadow_version: str | None = Field(
        default=None, description="The version scored in shadow off the request path (null: none)."
    )
    business_clock: datetime | None = None
    model_load_failure: ModelLoadFailure | None = Field(
        default=None,
        description="The champion version that was not loaded (it failed to load, or needs features the service "
        "does not serve) while the model in model_version keeps serving; null when there is none.",
    )
    detail: dict[str, str] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "unknown user 0000-AAAAA"}]})
    detail: Any
