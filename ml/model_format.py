"""The one form a model is loaded from: a scikit-learn pipeline stored as skops, read with a fixed list of types.

Pickle and cloudpickle run code while they load, so a registered version stored that way is refused before
its file is opened. A skops file names the types it holds; skops builds only types it trusts by default
(scikit-learn's estimators, numpy arrays...) and those in the list given to it. That list is
:data:`SKOPS_TRUSTED_TYPES`, fixed here: the ``skops_trusted_types`` an artifact's MLmodel declares are never
read, so a tampered artifact cannot widen it. MLflow's own loaders take that list from the artifact; StreamFlow
never calls them, and switches them off in every process (``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``, set by
:mod:`ml.tracking` and :mod:`streamflow.core.env`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import skops.io
from mlflow.models import Model

from ml.errors import MLError

SAFE_FORMAT = "skops"

# Beyond skops' defaults, only these two, and both come from our own pipelines: numpy dtypes in the encoders,
# and the tree nodes of HistGradientBoostingClassifier. A tuple: nothing at run time can add to it.
SKOPS_TRUSTED_TYPES: tuple[str, ...] = (
    "numpy.dtype",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)

RETRAIN = "retrain with `streamflow train --as-of M` (it logs skops), then `streamflow promote`"


class UnsafeModel(MLError):
    """A registered version whose artifact is not in the safe form: it is never deserialized.

    The message says how to replace it (the API shows only the message, so the fix is in it, not in ``hint``).
    """


def sklearn_flavor(mlmodel: Model, version: str) -> dict[str, Any]:
    """The scikit-learn flavor of a version's MLmodel; a version without one is refused."""
    conf = (mlmodel.flavors or {}).get("sklearn")
    if not isinstance(conf, dict):
        flavors = sorted(mlmodel.flavors or {})
        raise UnsafeModel(
            f"model version {version} is not a scikit-learn model stored as skops (its flavors: {flavors}); "
            f"StreamFlow loads only skops models: {RETRAIN}"
        )
    return conf


def safe_model_file(local: str | Path, mlmodel: Model, version: str) -> Path:
    """The skops file of a downloaded version, after checking that the version is stored as skops.

    MLflow records the format in the sklearn flavor's ``serialization_format``; a flavor without one was
    written by an MLflow that only knew pickle. The file must lie inside the version's folder.
    """
    conf = sklearn_flavor(mlmodel, version)
    fmt = str(conf.get("serialization_format") or "pickle")
    if fmt != SAFE_FORMAT:
        raise UnsafeModel(
            f"model version {version} is stored as {fmt}, which can run code when it is loaded; "
            f"StreamFlow loads only skops models: {RETRAIN}"
        )
    root = Path(local).resolve()
    path = (root / str(conf.get("pickled_model") or "")).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise UnsafeModel(
            f"model version {version} names no skops file inside its artifact "
            f"(pickled_model: {conf.get('pickled_model')!r}): {RETRAIN}"
        )
    return path


def load_pipeline(local: str | Path, mlmodel: Model, version: str) -> Any:
    """The pipeline of a downloaded version, read by skops with :data:`SKOPS_TRUSTED_TYPES` and nothing else."""
    path = safe_model_file(local, mlmodel, version)
    trusted = list(SKOPS_TRUSTED_TYPES)
    try:
        untrusted = sorted(set(skops.io.get_untrusted_types(file=path)) - set(trusted))
    except Exception as exc:  # noqa: BLE001 - a damaged file raises zip, JSON or skops errors alike
        raise MLError(f"the skops file of model version {version} cannot be read ({_one_line(exc)})") from None
    if untrusted:
        raise UnsafeModel(
            f"model version {version} holds types StreamFlow does not trust: {', '.join(untrusted)} "
            f"(trusted beyond skops' defaults: {', '.join(trusted)}); {RETRAIN}"
        )
    try:
        return skops.io.load(path, trusted=trusted)
    except Exception as exc:  # noqa: BLE001 - as above: any failure to build the pipeline is one clear error
        raise MLError(f"the skops file of model version {version} cannot be loaded ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
