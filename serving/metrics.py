"""Prometheus metrics the API exports. Alert rules and Grafana dashboards use exactly these names.

All metrics live in one registry per app, so tests can build several apps in one process.
Business time: feature ages are measured against the newest materialized ``as_of`` (the
business clock), never the wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

# Feast, when imported before prometheus_client, switches it to multiprocess mode (it sets
# PROMETHEUS_MULTIPROCESS_DIR for its own feature server): every metric's value then lives in a file per
# process and name, shared by all registries of the process. The API's metrics are in-process values of its
# own registry, whichever was imported first.
values.ValueClass = values.MutexValue

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PROBABILITY_BUCKETS = tuple(round(i / 20, 2) for i in range(1, 21))
AGE_DAYS = 86400.0

# name -> help; the single list of metric names (without the _total/_bucket/... suffixes)
METRIC_NAMES = {
    "streamflow_http_requests": "HTTP requests by route, method and status.",
    "streamflow_http_request_duration_seconds": "HTTP request latency by route, method and status.",
    "streamflow_prediction_probability": "Churn probabilities returned by /predict and /predict/batch.",
    "streamflow_predictions": "Predictions returned, by predicted label.",
    "streamflow_model_info": "The serving model: version, alias, trained as_of (value is always 1).",
    "streamflow_model_version": "Registry version number of the serving model.",
    "streamflow_model_created_timestamp_seconds": "When the serving model version was registered (Unix time).",
    "streamflow_model_reloads": "Model swaps after the champion alias moved.",
    "streamflow_model_load_failures": "Champion versions that failed to load or were refused (old model kept serving).",
    "streamflow_ready": "1 when the model is loaded and the online store answers, else 0.",
    "streamflow_online_feature_age_seconds": "Business-time age of the online features last served, by feature view.",
    "streamflow_store_errors": "Errors talking to a backing store, by store (online, registry).",
    "streamflow_pipeline_last_status": "1 when the last run of a pipeline succeeded, 0 when it failed.",
    "streamflow_pipeline_last_run_timestamp_seconds": "When a pipeline last finished (Unix time).",
    "streamflow_drift_share": "Share of model features that drifted in the last drift report.",
    "streamflow_drift_detected": "1 when the last drift report advised retraining, else 0.",
    "streamflow_shadow_version": "Registry version number of the shadow model scored off the request path (0: none).",
    "streamflow_shadow_rows": "Shadow rows written to ml.shadow_scores.",
    "streamflow_shadow_dropped": "Predictions not scored in shadow because the shadow queue was full.",
    "streamflow_shadow_failed": "Predictions not scored in shadow because scoring or writing their batch failed.",
}


@dataclass
class ApiMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    probability: Histogram
    predictions: Counter
    model_info: Gauge
    model_version: Gauge
    model_created: Gauge
    model_reloads: Counter
    model_load_failures: Counter
    ready: Gauge
    feature_age: Gauge
    store_errors: Counter
    pipeline_status: Gauge
    pipeline_last_run: Gauge
    drift_share: Gauge
    drift_detected: Gauge
    shadow_version: Gauge
    shadow_rows: Counter
    shadow_dropped: Counter
    shadow_failed: Counter


def build_metrics() -> ApiMetrics:
    """A fresh registry with every metric the API exports."""
    r = CollectorRegistry()
    h = METRIC_NAMES
    return ApiMetrics(
        registry=r,
        requests=Counter(
            "streamflow_http_requests", h["streamflow_http_requests"], ["route", "method", "status"], registry=r
        ),
        latency=Histogram(
            "streamflow_http_request_duration_seconds",
            h["streamflow_http_request_duration_seconds"],
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        ),
        probability=Histogram(
            "streamflow_prediction_probability",
            h["streamflow_prediction_probability"],
            buckets=PROBABILITY_BUCKETS,
            registry=r,
        ),
        predictions=Counter("streamflow_predictions", h["streamflow_predictions"], ["label"], registry=r),
        model_info=Gauge(
            "streamflow_model_info", h["streamflow_model_info"], ["version", "alias", "trained_as_of"], registry=r
        ),
        model_version=Gauge("streamflow_model_version", h["streamflow_model_version"], registry=r),
        model_created=Gauge(
            "streamflow_model_created_timestamp_seconds", h["streamflow_model_created_timestamp_seconds"], registry=r
        ),
        model_reloads=Counter("streamflow_model_reloads", h["streamflow_model_reloads"], registry=r),
        model_load_failures=Counter("streamflow_model_load_failures", h["streamflow_model_load_failures"], registry=r),
        ready=Gauge("streamflow_ready", h["streamflow_ready"], registry=r),
        feature_age=Gauge(
            "streamflow_online_feature_age_seconds",
            h["streamflow_online_feature_age_seconds"],
            ["feature_view"],
            registry=r,
        ),
        store_errors=Counter("streamflow_store_errors", h["streamflow_store_errors"], ["store"], registry=r),
        pipeline_status=Gauge(
            "streamflow_pipeline_last_status", h["streamflow_pipeline_last_status"], ["pipeline"], registry=r
        ),
        pipeline_last_run=Gauge(
            "streamflow_pipeline_last_run_timestamp_seconds",
            h["streamflow_pipeline_last_run_timestamp_seconds"],
            ["pipeline"],
            registry=r,
        ),
        drift_share=Gauge("streamflow_drift_share", h["streamflow_drift_share"], registry=r),
        drift_detected=Gauge("streamflow_drift_detected", h["streamflow_drift_detected"], registry=r),
        shadow_version=Gauge("streamflow_shadow_version", h["streamflow_shadow_version"], registry=r),
        shadow_rows=Counter("streamflow_shadow_rows", h["streamflow_shadow_rows"], registry=r),
        shadow_dropped=Counter("streamflow_shadow_dropped", h["streamflow_shadow_dropped"], registry=r),
        shadow_failed=Counter("streamflow_shadow_failed", h["streamflow_shadow_failed"], registry=r),
    )
