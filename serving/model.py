"""The serving model: the registry's ``champion``, compiled for one-row predictions and swapped atomically.

:class:`ModelHolder` keeps the current :class:`ServingModel` in one attribute. A request reads it once and
finishes on that model, so a swap never changes a prediction half-way. A background thread polls the alias
every ``model_poll_seconds``; registry errors keep the current model and are counted. The scorer each model
predicts with is compiled by :mod:`serving.scorer`.

A version that fails to load, or that ``accept`` refuses (the app refuses a model needing features its feature
service does not serve), never replaces the serving model: the failure is recorded (``load_failure``, shown by
/ready), reported (``on_load_failure``: the load-failure counter), and that version is tried again only after
``retry_failed_seconds``. Loading refuses, as such a failure, a version not stored in the safe form (skops with
the project's trusted types, :mod:`ml.model_format`) before deserializing anything of it.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol

import mlflow
import numpy as np
from mlflow.models import Model

from ml.tracking import configure, load_version, version_by_alias
from serving.scorer import Row, Scorer, compile_scorer
from streamflow.core.errors import StreamflowError
from streamflow.core.names import CHAMPION
from streamflow.core.settings import Settings
from streamflow.features.labels import labels_from_docs

log = logging.getLogger("streamflow.serving.model")


class ModelUnavailable(StreamflowError):
    """No model can be served (the registry has no champion yet, or it was never reachable)."""


@dataclass(frozen=True)
class ServingModel:
    """A registered model version ready to score, with what /model reports about it."""

    name: str
    version: str
    alias: str
    run_id: str
    threshold: float
    features: list[str]
    scorer: Scorer
    metrics: dict[str, float] = field(default_factory=dict)
    trained_as_of: date | None = None
    created: datetime | None = None  # when the version was registered
    loaded_at: float = field(default_factory=time.time)
    labels: dict[str, str] = field(default_factory=dict)  # feature -> human label (dbt docs), for reasons

    def proba(self, rows: Sequence[Row]) -> np.ndarray:
        return self.scorer.proba(rows)

    @property
    def explains(self) -> bool:
        """The scorer gives exact contributions (reasons) for this model."""
        return self.scorer.base is not None


@dataclass(frozen=True)
class VersionRef:
    """What the alias points at: enough to decide whether to load."""

    version: str
    created: datetime | None = None


@dataclass(frozen=True)
class LoadFailure:
    """A version the alias points at that is not served: which, why, when (Unix time)."""

    version: str
    reason: str
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "reason": self.reason, "at": datetime.fromtimestamp(self.at, UTC).isoformat()}


class ModelRefused(StreamflowError):
    """A version that loaded but must not serve (``accept`` gave the reason)."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class ModelSource(Protocol):
    alias: str

    def current(self) -> VersionRef | None:
        """The version behind the alias now (None: no such alias yet). Raises when the registry is unreachable."""

    def load(self, ref: VersionRef) -> ServingModel:
        """Load and compile one version."""


def _as_of(value: Any) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


class MlflowModelSource:
    """The ``champion`` of the registered model in the MLflow registry of these settings (ml.tracking)."""

    def __init__(self, settings: Settings, alias: str = CHAMPION):
        self.settings = settings
        self.alias = alias
        self._client = None

    def _registry(self):
        if self._client is None:
            self._client = configure(self.settings)
        return self._client

    def current(self) -> VersionRef | None:
        mv = version_by_alias(self._registry(), self.settings.model_name, self.alias)
        if mv is None:
            return None
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC) if mv.creation_timestamp else None
        return VersionRef(str(mv.version), created)

    def load(self, ref: VersionRef) -> ServingModel:
        client = self._registry()
        loaded = load_version(self.settings, ref.version, client)
        example: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{self.settings.model_name}/{ref.version}", dst_path=tmp
            )
            frame = Model.load(local).load_input_example(local)
            if frame is not None:
                example = frame.to_dict(orient="records")
        scorer = compile_scorer(loaded.pipeline, loaded.features, example, fast=self.settings.model_fast_path)
        log.info(
            "model %s v%s loaded (%s scorer, largest difference to the pipeline %.2g)",
            loaded.name,
            loaded.version,
            scorer.kind,
            scorer.max_difference,
        )
        if scorer.base is None:
            log.info("model %s v%s answers without reasons (no exact decomposition)", loaded.name, loaded.version)
        return ServingModel(
            name=loaded.name,
            version=loaded.version,
            alias=self.alias,
            run_id=loaded.run_id,
            threshold=loaded.threshold,
            features=list(loaded.features),
            scorer=scorer,
            metrics=dict(loaded.metrics),
            trained_as_of=_as_of(loaded.tags.get("as_of") or loaded.lineage.get("as_of")),
            created=ref.created,
            labels=labels_from_docs(self.settings, list(loaded.features)),
        )


class ModelHolder:
    """The model being served, replaced atomically when the alias moves.

    ``current`` is read once per request: the request finishes on that model even if a swap happens meanwhile.
    With ``clear_when_absent`` (the shadow) an alias that names no version any more leaves ``current`` None.
    ``on_swap(new, old)``, ``on_error(exc)`` (registry unreachable) and ``on_load_failure(failure)`` let the app
    update its metrics; ``accept(model)`` returns why a loaded model must not replace a serving one (None: fine).
    """

    def __init__(
        self,
        source: ModelSource,
        poll_seconds: float,
        *,
        on_swap: Callable[[ServingModel, ServingModel | None], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        retry_failed_seconds: float = 60.0,
        clear_when_absent: bool = False,
    ):
        self.source = source
        self.clear_when_absent = clear_when_absent  # no version behind the alias: serve none (the shadow)
        self.poll_seconds = poll_seconds
        self.retry_failed_seconds = retry_failed_seconds
        self.current: ServingModel | None = None
        self.registry_ok = False
        self.last_error: str | None = None
        self.last_poll: float | None = None
        self.load_failure: LoadFailure | None = None
        self.on_swap = on_swap
        self.on_error = on_error
        self.on_load_failure: Callable[[LoadFailure], None] | None = None
        self.accept: Callable[[ServingModel], str | None] | None = None
        self._lock = threading.Lock()  # one poll at a time (the thread and /admin/model/reload)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> bool:
        """Check the alias once; load and swap when it points at another version. True when the model changed.

        Errors keep the current model: an unreachable registry is recorded (``registry_ok``, ``last_error``), a
        version that fails to load or is refused is recorded in ``load_failure``; both are reported.
        """
        with self._lock:
            try:
                ref = self.source.current()
            except Exception as exc:  # noqa: BLE001 - any registry failure keeps the model being served
                self._unreachable(exc)
                return False
            finally:
                self.last_poll = time.time()
            self.registry_ok = True
            if ref is None:
                self.last_error = f"the registry has no {self.source.alias} version yet"
                return self._clear()
            self.last_error = None
            old = self.current
            if old is not None and old.version == ref.version:
                self.load_failure = None  # the alias is back on the serving version
                return False
            if self._failed_recently(ref.version):
                return False
            try:
                new = self._load(ref, old)
            except Exception as exc:  # noqa: BLE001 - a version that cannot serve keeps the model being served
                self._load_failed(ref.version, exc)
                return False
            self.current = new  # the swap: one reference assignment
            self.load_failure = None
            if self.on_swap is not None:
                self.on_swap(new, old)
            log.info("serving model %s v%s (%s)", new.name, new.version, new.alias)
            return True

    def _clear(self) -> bool:
        """With ``clear_when_absent``, stop serving the current model; True when there was one."""
        if not self.clear_when_absent or self.current is None:
            return False
        old, self.current = self.current, None
        log.info("%s v%s is no longer named by the registry: not served any more", old.alias, old.version)
        return True

    def _failed_recently(self, version: str) -> bool:
        """``version`` failed less than ``retry_failed_seconds`` ago: it is tried again after that."""
        failed = self.load_failure
        return failed is not None and failed.version == version and time.time() - failed.at < self.retry_failed_seconds

    def _load(self, ref: VersionRef, old: ServingModel | None) -> ServingModel:
        new = self.source.load(ref)
        reason = self.accept(new) if self.accept is not None and old is not None else None
        if reason is not None:
            raise ModelRefused(f"refused: {reason}")
        return new

    def _unreachable(self, exc: BaseException) -> None:
        self.registry_ok = False
        self.last_error = _one_line(exc)
        log.warning("model registry poll failed (the current model keeps serving): %s", self.last_error)
        if self.on_error is not None:
            self.on_error(exc)

    def _load_failed(self, version: str, exc: BaseException) -> None:
        # our own errors (refused, not stored as skops...) say what is wrong in their message; others get their type
        reason = str(exc) if isinstance(exc, StreamflowError) else _one_line(exc)
        failure = self.load_failure = LoadFailure(version, reason)
        serving = f"v{self.current.version} keeps serving" if self.current is not None else "no model to serve"
        log.error("%s v%s was not loaded (%s): %s", self.source.alias, version, reason, serving)
        if self.on_load_failure is not None:
            self.on_load_failure(failure)

    def start(self) -> None:
        """Poll now, then every ``poll_seconds`` in a daemon thread."""
        if self._thread is not None:
            return
        self.poll()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="model-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def why_none(self) -> str:
        """Why no model is served (when ``current`` is None)."""
        failure = self.load_failure
        if failure is not None:
            return f"{self.source.alias} v{failure.version} failed to load: {failure.reason}"
        return self.last_error or "waiting for the registry"

    def require(self) -> ServingModel:
        model = self.current
        if model is None:
            raise ModelUnavailable(self.why_none())
        return model
