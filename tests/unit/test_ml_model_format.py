"""Models load only as skops with the trusted types fixed in ml/model_format.py: pickle and cloudpickle are refused
before their file is opened, an artifact cannot widen the trusted list, and MLflow's own loaders are off.

Real MLflow artifacts written by `mlflow.sklearn.save_model` into a folder (the registry is not needed to check
a model's form; tests/integration/test_model_format.py does it through the registry, promote and the API)."""

from __future__ import annotations

import operator
import os
import pickle
from pathlib import Path

import mlflow.sklearn
import numpy as np
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from ml import model_format
from ml.errors import MLError
from ml.model_format import SKOPS_TRUSTED_TYPES, UnsafeModel, load_pipeline
from ml.tracking import SKOPS_TRUSTED_TYPES as TRACKING_TRUSTED_TYPES
from streamflow.core.env import PICKLE_SWITCH, settings_environment, tool_environment
from tests.conftest import ROOT, make_settings
from tests.serving_support import MODEL_FEATURES, fitted_pipeline, training_frame


class Trap:
    """Unpickling this runs ``Path(marker).touch()``: the code a pickled artifact can carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def save(path: Path, pipeline, fmt: str = "skops", trusted=SKOPS_TRUSTED_TYPES) -> Model:
    frame, _y = training_frame(20)
    mlflow.sklearn.save_model(
        pipeline,
        str(path),
        serialization_format=fmt,
        skops_trusted_types=list(trusted) if fmt == "skops" else None,
        input_example=frame[MODEL_FEATURES].head(3),
        pip_requirements=["scikit-learn"],
    )
    return Model.load(str(path))


def edit_flavor(path: Path, **changes) -> Model:
    mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    mlmodel["flavors"]["sklearn"].update(changes)
    (path / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return Model.load(str(path))


def test_a_skops_model_loads_with_the_fixed_trusted_types_and_predicts_as_fitted(tmp_path):
    pipeline = fitted_pipeline("hist_gradient_boosting")  # its tree nodes need a trusted type of the list
    mlmodel = save(tmp_path / "m", pipeline)
    loaded = load_pipeline(tmp_path / "m", mlmodel, "1")
    frame, _y = training_frame(50, seed=3)
    assert np.array_equal(loaded.predict_proba(frame[MODEL_FEATURES]), pipeline.predict_proba(frame[MODEL_FEATURES]))


def test_the_trusted_types_are_fixed_in_code_and_training_logs_with_the_same_list():
    assert isinstance(SKOPS_TRUSTED_TYPES, tuple)  # nothing at run time appends to it
    assert SKOPS_TRUSTED_TYPES == (
        "numpy.dtype",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    )
    assert TRACKING_TRUSTED_TYPES is SKOPS_TRUSTED_TYPES  # ml.train logs with ml.tracking's name for it


@pytest.mark.parametrize("fmt", ["pickle", "cloudpickle"])
def test_pickle_and_cloudpickle_are_refused_without_opening_the_file(tmp_path, fmt):
    mlmodel = save(tmp_path / "m", fitted_pipeline("logistic_regression"), fmt=fmt)
    marker = tmp_path / "unpickled"
    (tmp_path / "m" / mlmodel.flavors["sklearn"]["pickled_model"]).write_bytes(pickle.dumps(Trap(marker)))
    with pytest.raises(UnsafeModel) as refused:
        load_pipeline(tmp_path / "m", mlmodel, "7")
    assert str(refused.value).startswith(f"model version 7 is stored as {fmt}, which can run code when it is loaded")
    assert "StreamFlow loads only skops models" in str(refused.value) and "streamflow train" in str(refused.value)
    assert not marker.exists()  # nothing of the artifact ran


def test_a_flavor_without_a_format_is_an_old_pickle_and_is_refused(tmp_path):
    save(tmp_path / "m", fitted_pipeline("logistic_regression"))
    mlmodel = edit_flavor(tmp_path / "m", serialization_format=None)
    with pytest.raises(UnsafeModel, match="stored as pickle"):
        load_pipeline(tmp_path / "m", mlmodel, "2")


def test_an_artifact_that_lists_an_extra_trusted_type_does_not_widen_the_list(tmp_path):
    """The artifact's MLmodel trusts `_operator.neg` (MLflow's loader would build it); ours refuses and names it."""
    pipeline = make_pipeline(FunctionTransformer(operator.neg), fitted_pipeline("logistic_regression"))
    extra = [*SKOPS_TRUSTED_TYPES, "_operator.neg"]
    mlmodel = save(tmp_path / "m", pipeline, trusted=extra)
    assert mlmodel.flavors["sklearn"]["skops_trusted_types"] == extra
    with pytest.raises(UnsafeModel) as refused:
        load_pipeline(tmp_path / "m", mlmodel, "4")
    assert "model version 4 holds types StreamFlow does not trust: _operator.neg" in str(refused.value)
    # tampered: the MLmodel rewritten to trust anything it likes changes nothing
    mlmodel = edit_flavor(tmp_path / "m", skops_trusted_types=[*extra, "builtins.eval", "posix.system"])
    with pytest.raises(UnsafeModel, match="_operator.neg"):
        load_pipeline(tmp_path / "m", mlmodel, "4")


def test_a_model_file_outside_the_artifact_or_missing_is_refused(tmp_path):
    save(tmp_path / "m", fitted_pipeline("logistic_regression"))
    save(tmp_path / "other", fitted_pipeline("logistic_regression"))
    mlmodel = edit_flavor(tmp_path / "m", pickled_model="../other/model.skops")
    with pytest.raises(UnsafeModel, match="names no skops file inside its artifact"):
        load_pipeline(tmp_path / "m", mlmodel, "5")
    mlmodel = edit_flavor(tmp_path / "m", pickled_model="absent.skops")
    with pytest.raises(UnsafeModel, match="names no skops file"):
        load_pipeline(tmp_path / "m", mlmodel, "5")


def test_a_model_without_a_scikit_learn_flavor_is_refused(tmp_path):
    mlmodel = save(tmp_path / "m", fitted_pipeline("logistic_regression"))
    mlmodel.flavors.pop("sklearn")
    flavors = r"\(its flavors: \['python_function'\]\)"
    with pytest.raises(UnsafeModel, match=r"not a scikit-learn model stored as skops " + flavors):
        load_pipeline(tmp_path / "m", mlmodel, "6")


def test_a_damaged_skops_file_is_a_clear_error_not_a_traceback(tmp_path):
    mlmodel = save(tmp_path / "m", fitted_pipeline("logistic_regression"))
    (tmp_path / "m" / "model.skops").write_bytes(b"not a model")
    with pytest.raises(MLError, match=r"the skops file of model version 3 cannot be read \(BadZipFile"):
        load_pipeline(tmp_path / "m", mlmodel, "3")


def test_mlflow_deserialization_is_off_in_this_process_and_in_every_environment_handed_to_children(tmp_path):
    assert os.environ[PICKLE_SWITCH] == "false"  # importing ml.tracking switched it off
    save(tmp_path / "m", fitted_pipeline("logistic_regression"))
    with pytest.raises(MlflowException, match=PICKLE_SWITCH):
        mlflow.sklearn.load_model(str(tmp_path / "m"))  # MLflow's loader (artifact-chosen trusted types) is off
    settings = make_settings(tmp_path / "home")
    assert settings_environment(settings)[PICKLE_SWITCH] == "false"  # CLI and Airflow tasks
    assert tool_environment(settings)[PICKLE_SWITCH] == "false"  # Airflow itself, dbt, `stack env`
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["x-streamflow-env"][PICKLE_SWITCH] == "false"  # the API and Airflow containers
    assert model_format.SAFE_FORMAT == "skops"
