"""A version logged as pickle or cloudpickle is refused by `streamflow promote` and by the API, with its reason;
the champion stays and keeps serving.

Real MLflow (the session's PostgreSQL store and artifacts), the real promotion gate and command line, the real
app over HTTP with the MLflow model source; the online features are the in-memory ones of the unit tests (the
model's form, not the feature store, is under test). Each test uses registered models of its own."""

from __future__ import annotations

import httpx
import mlflow
import mlflow.sklearn
import pytest

from ml.model_format import SKOPS_TRUSTED_TYPES, UnsafeModel
from ml.promote import promote
from ml.tracking import VALIDATION_FRAME_ARTIFACT, configure, ensure_experiment, version_by_alias
from serving.app import create_app
from serving.model import MlflowModelSource, ModelHolder
from streamflow.core.names import CHALLENGER, CHAMPION
from streamflow.core.runlog import OpsState
from tests.conftest import run_cli
from tests.serving_support import MODEL_FEATURES, MemoryFeatures, fitted_pipeline, serve_in_thread, training_frame
from tests.serving_support import user_values as values_of

pytestmark = pytest.mark.integration

USER = "1111-AAAAA"


def log_version(settings, tmp, fmt: str, seed: int = 0) -> str:
    """Log a fitted pipeline stored as ``fmt``, with the validation rows promote scores it on; returns its version."""
    client = configure(settings)
    pipeline = fitted_pipeline("logistic_regression", seed)
    frame, y = training_frame(400, seed=seed + 100)
    valid = frame[MODEL_FEATURES].assign(churn_label=y)
    folder, name = VALIDATION_FRAME_ARTIFACT.rsplit("/", 1)
    path = tmp / f"{settings.model_name}-{fmt}-{seed}" / name
    path.parent.mkdir(parents=True)
    valid.to_parquet(path)
    experiment = ensure_experiment(client, settings, "model_format")
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_artifact(str(path), artifact_path=folder)
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            serialization_format=fmt,
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES) if fmt == "skops" else None,
            input_example=frame[MODEL_FEATURES].head(3),
            pip_requirements=["scikit-learn"],
            pyfunc_predict_fn="predict_proba",
            metadata={"threshold": 0.5, "features": MODEL_FEATURES, "lineage": {"as_of": "2024-03-31"}},
            registered_model_name=settings.model_name,
        )
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def registry(mlflow_settings, tmp_path_factory):
    """Model ``format_churn``: version 1 (skops) promoted to champion through the gate."""
    settings = mlflow_settings.model_copy(
        update={"model_name": "format_churn", "promotion_min_roc_auc": 0.5, "api_token": None}
    )
    tmp = tmp_path_factory.mktemp("model_format")
    assert log_version(settings, tmp, "skops") == "1"
    configure(settings).set_registered_model_alias(settings.model_name, CHALLENGER, "1")
    result = promote(settings)
    assert result.decision.promote and result.champion_after == "1", result.as_dict()
    return settings, tmp


def alias(settings, name: str) -> str | None:
    mv = version_by_alias(configure(settings), settings.model_name, name)
    return str(mv.version) if mv is not None else None


@pytest.mark.parametrize("fmt", ["cloudpickle", "pickle"])
def test_promote_refuses_a_challenger_logged_as_pickle_with_its_reason_and_the_champion_stays(registry, fmt):
    settings, tmp = registry
    client = configure(settings)
    version = log_version(settings, tmp, fmt, seed=1)  # a better fit than v1 would pass the gate on its scores
    client.set_registered_model_alias(settings.model_name, CHALLENGER, version)

    with pytest.raises(UnsafeModel) as refused:
        promote(settings)
    reason = str(refused.value)
    assert reason.startswith(f"model version {version} is stored as {fmt}, which can run code when it is loaded")
    assert alias(settings, CHAMPION) == "1"
    tags = client.get_model_version(settings.model_name, version).tags
    assert tags["promotion.decision"] == "refuse" and tags["promotion.reasons"] == reason
    assert tags["promotion.champion"] == "1"
    assert client.get_model_version(settings.model_name, "1").tags["promotion.decision"] == "promote"  # untouched

    if fmt == "cloudpickle":  # the command line shows the reason, without a traceback, and fails
        proc = run_cli(settings, "promote", check=False)
        shown = proc.stdout + proc.stderr
        assert proc.returncode == 1, shown
        text = " ".join(shown.split())  # the console wraps long lines
        assert f"model version {version} is stored as cloudpickle" in text and "streamflow train" in text, shown
        assert "Traceback" not in shown
        assert alias(settings, CHAMPION) == "1"


def ops_state() -> OpsState:
    return OpsState({}, None, None)


def load_failures(api) -> float:
    for line in api.get("/metrics").text.splitlines():
        if line.startswith("streamflow_model_load_failures_total "):
            return float(line.split()[1])
    raise AssertionError("streamflow_model_load_failures_total is not exported")


def test_the_api_keeps_serving_its_champion_when_the_alias_moves_to_a_pickled_version(registry):
    settings, tmp = registry
    client = configure(settings)
    version = log_version(settings, tmp, "cloudpickle", seed=2)
    features = MemoryFeatures()
    features.add(USER, values_of(0))
    models = ModelHolder(MlflowModelSource(settings), poll_seconds=3600, retry_failed_seconds=3600)
    app = create_app(settings, features, models, ops_state=ops_state)
    try:
        with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as api:
            before = api.post("/predict", json={"user_id": USER})
            assert before.status_code == 200 and before.json()["model_version"] == "1", before.text
            failures = load_failures(api)

            client.set_registered_model_alias(settings.model_name, CHAMPION, version)
            assert models.poll() is False  # not swapped

            ready = api.get("/ready")
            body = ready.json()
            assert ready.status_code == 200 and body["model_version"] == "1", ready.text
            failure = body["model_load_failure"]
            assert failure["version"] == version
            assert failure["reason"].startswith(f"model version {version} is stored as cloudpickle"), failure
            assert "StreamFlow loads only skops models" in failure["reason"]
            assert f"v{version} was not loaded" in body["detail"]["model"]
            assert "v1 keeps serving" in body["detail"]["model"]
            assert load_failures(api) == failures + 1
            after = api.post("/predict", json={"user_id": USER})
            assert after.status_code == 200 and after.json() == before.json()  # the old champion keeps serving
    finally:
        client.set_registered_model_alias(settings.model_name, CHAMPION, "1")


def test_a_champion_logged_as_pickle_is_not_compared_and_a_safe_challenger_replaces_it_on_the_floors(
    mlflow_settings, tmp_path
):
    settings = mlflow_settings.model_copy(update={"model_name": "format_churn_old", "promotion_min_roc_auc": 0.5})
    client = configure(settings)
    old = log_version(settings, tmp_path, "pickle")
    client.set_registered_model_alias(settings.model_name, CHAMPION, old)  # set by hand: promote would refuse it
    new = log_version(settings, tmp_path, "skops", seed=1)
    client.set_registered_model_alias(settings.model_name, CHALLENGER, new)

    result = promote(settings)
    assert result.decision.promote and (result.champion_before, result.champion_after) == (old, new)
    assert result.champion_scores is None
    reasons = " | ".join(result.decision.reasons)
    assert f"the champion (version {old}) is not compared: model version {old} is stored as pickle" in reasons
    assert "no champion yet" not in reasons and "meets the floor" in reasons
    assert alias(settings, CHAMPION) == new
