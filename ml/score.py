"""Batch scoring: every user active at an as_of, scored by the champion, into ``ml.churn_scores``.

Idempotent per as_of: scoring a month again replaces that month's rows in one transaction, so
readers see either the old scores or the new ones. The table has one definition, the dbt macro
``ensure_churn_scores_table`` (``dbt_project/macros/ml_churn_scores.sql``), which every
``streamflow build`` runs before the ``marts.churn_predictions`` view it feeds; dbt declares the
table as a source (``dbt_project/models/ml/__ml_sources.yml``). This module only writes rows.

Each row carries the prediction's top reasons (``reasons``, jsonb, the body the API answers: base, margin and the
features that push the risk up and hold it down the most, with label, value and contribution), computed from the
exact feature vector scored by :class:`ml.explain.Explainer`; the dbt mart ``churn_reasons`` aggregates them.

When the registry holds a shadow (:func:`ml.tracking.shadow_of`: the alias ``shadow``, else a challenger that was not
promoted), its probability for every scored user goes to ``ml.shadow_scores`` (``source = 'batch'``) in the same
transaction (:func:`shadow_rows`, :func:`write_shadow_rows`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd

from ml.dataset import FeastSource, FeatureSource
from ml.errors import MLError
from ml.explain import DEFAULT_REASONS, Explainer, top_reasons
from ml.threads import limited_threads
from ml.tracking import configure, load_model_alias, load_version, shadow_of
from streamflow.core import runlog
from streamflow.core.db import connect
from streamflow.core.lock import pipeline_lock
from streamflow.core.names import CHAMPION, CHURN_SCORES, SHADOW_SCORES, SHADOW_SCORES_COLUMNS
from streamflow.core.progress import SILENT, Progress
from streamflow.core.settings import Settings
from streamflow.features.labels import labels_from_docs

log = logging.getLogger("streamflow.ml.score")

COLUMNS = ("user_id", "as_of", "churn_probability", "churn_label_predicted", "model_version", "scored_at", "reasons")
SHADOW_COLUMNS = SHADOW_SCORES_COLUMNS
BATCH = "batch"  # ml.shadow_scores.source of the rows `streamflow score` writes


@dataclass
class ScoreResult:
    as_of: date
    model_name: str
    model_version: str
    threshold: float
    rows: int
    predicted_churners: int
    replaced_rows: int
    seconds: float
    shadow_version: str | None = None  # the shadow scored next to the champion (ml.shadow_scores), if any
    shadow_rows: int = 0
    shadow_error: str | None = None  # why a shadow that exists was not scored (the champion's rows are written)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["as_of"] = self.as_of.isoformat()
        return d


def reasons_of(
    frame: pd.DataFrame, model, labels: dict[str, str] | None = None, count: int = DEFAULT_REASONS
) -> list[str | None]:
    """Each row's reasons as JSON text (None for every row when the model has no exact decomposition)."""
    try:
        explainer = Explainer.of(model.pipeline, model.features)
    except MLError as exc:
        log.warning("scores are written without reasons: %s", exc)
        return [None] * len(frame)
    margins, contributions = explainer.explain(frame)
    values = frame[model.features].to_numpy(dtype=object)
    labels = labels or {}
    out = []
    for margin, line, served in zip(margins, contributions, values, strict=True):
        body = {
            "base": explainer.base,
            "margin": float(margin),
            **top_reasons(line, served, model.features, labels, count),
        }
        out.append(json.dumps(body, allow_nan=False, default=_json_value))
    return out


def _json_value(value):
    """Values JSON has no type for: dates and timestamps as ISO text, numpy scalars as numbers."""
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def score_frame(
    frame: pd.DataFrame, model, as_of: date, scored_at: datetime, labels: dict[str, str] | None = None
) -> pd.DataFrame:
    """The rows to store: one per user of ``frame``, in user_id order, with their top reasons."""
    if frame["user_id"].duplicated().any():
        raise MLError(f"the feature frame at {as_of} has duplicate user_id rows")
    frame = frame.sort_values("user_id", kind="mergesort").reset_index(drop=True)
    proba = model.predict_proba(frame)
    return pd.DataFrame(
        {
            "user_id": frame["user_id"].astype(str),
            "as_of": as_of,
            "churn_probability": proba.astype(float),
            "churn_label_predicted": proba >= model.threshold,
            "model_version": int(model.version),
            "scored_at": scored_at,
            "reasons": reasons_of(frame, model, labels),
        }
    )


def write_scores(
    settings: Settings,
    as_of: date,
    rows: pd.DataFrame | Iterable[pd.DataFrame],
    shadow: pd.DataFrame | Callable[[], pd.DataFrame | None] | None = None,
) -> int:
    """Replace the rows of ``as_of`` in ml.churn_scores with ``rows`` (a frame, or frames written one after the
    other, e.g. computed chunk by chunk while the transaction is open); returns how many were replaced. Given
    ``shadow`` (its rows, or a function giving them once every chunk of ``rows`` is written), the shadow's batch
    rows of that month and version in ml.shadow_scores are replaced in the same transaction."""
    chunks = [rows] if isinstance(rows, pd.DataFrame) else rows
    with pipeline_lock(settings, "score", as_of), connect(settings) as conn, conn.transaction():
        if not _table_exists(conn):
            raise MLError(
                f"the warehouse has no {CHURN_SCORES} table yet: run `streamflow build` first "
                "(dbt creates it with the churn_predictions mart)"
            )
        if not _has_reasons(conn):
            raise MLError(
                f"{CHURN_SCORES} has no reasons column yet (a warehouse built by an earlier version): "
                "run `streamflow build` first, it adds the column"
            )
        # one writer per table at a time; readers are not blocked
        conn.execute(f"lock table {CHURN_SCORES} in share row exclusive mode")
        replaced = conn.execute(f"delete from {CHURN_SCORES} where as_of = %s", (as_of,)).rowcount
        written, version = 0, None
        for chunk in chunks:
            _copy_scores(conn, chunk)
            written += len(chunk)
            version = int(chunk["model_version"].iloc[0]) if len(chunk) else version
        shadow_frame = shadow() if callable(shadow) else shadow
        if shadow_frame is not None:
            write_shadow_rows(conn, shadow_frame)
        runlog.record_month(conn, as_of, "scored", {"rows": written, "model_version": version})
    return replaced


def _copy_scores(conn, rows: pd.DataFrame) -> None:
    with conn.cursor().copy(f"copy {CHURN_SCORES} ({', '.join(COLUMNS)}) from stdin") as copy:
        for rec in rows.itertuples(index=False):
            copy.write_row(
                (
                    rec.user_id,
                    rec.as_of,
                    float(rec.churn_probability),
                    bool(rec.churn_label_predicted),
                    int(rec.model_version),
                    rec.scored_at,
                    getattr(rec, "reasons", None),  # rows from before reasons: null
                )
            )


def score_chunks(
    frame: pd.DataFrame,
    model,
    as_of: date,
    scored_at: datetime,
    labels: dict[str, str] | None,
    chunk_rows: int,
    totals: dict[str, int],
    each: Callable[[pd.DataFrame, pd.DataFrame], None] | None = None,
) -> Iterator[pd.DataFrame]:
    """:func:`score_frame` of ``frame`` ``chunk_rows`` users at a time, in user_id order: together exactly the
    rows of one :func:`score_frame` call, with only one chunk's probabilities and reasons in memory at a time.
    ``totals`` counts ``rows`` and ``predicted_churners`` as chunks are produced; ``each(frame_chunk, rows)`` is
    called with every chunk (the shadow scores the same users)."""
    if frame["user_id"].duplicated().any():
        raise MLError(f"the feature frame at {as_of} has duplicate user_id rows")
    order = np.argsort(frame["user_id"].to_numpy(dtype=str), kind="mergesort")
    totals.update(rows=0, predicted_churners=0)
    for start in range(0, len(order), chunk_rows):
        part = frame.iloc[order[start : start + chunk_rows]]
        rows = score_frame(part, model, as_of, scored_at, labels)
        if each is not None:
            each(part, rows)
        totals["rows"] += len(rows)
        totals["predicted_churners"] += int(rows["churn_label_predicted"].sum())
        yield rows


def score(
    settings: Settings, as_of: date, *, source: FeatureSource | None = None, progress: Progress = SILENT
) -> ScoreResult:
    """Score every user active at ``as_of`` with the champion and store the scores."""
    started = time.perf_counter()
    source = source or FeastSource(settings)
    progress.start("loading the champion")
    champion = load_model_alias(settings, CHAMPION)
    progress.start(f"reading the features of users active at {as_of}")
    frame = source.feature_frame(as_of)
    if frame.empty:
        raise MLError(f"no active users at {as_of}: has this month been ingested and built (`streamflow build`)?")
    progress.start(f"scoring {len(frame):,} users")
    labels = labels_from_docs(settings, champion.features)
    totals: dict[str, int] = {}
    with limited_threads(settings):
        shadow = BatchShadow.load(settings)
        chunks = score_chunks(
            frame, champion, as_of, datetime.now(UTC), labels, settings.score_chunk_rows, totals, shadow.add
        )
        replaced = write_scores(settings, as_of, chunks, shadow.rows)
    return ScoreResult(
        as_of=as_of,
        model_name=settings.model_name,
        model_version=champion.version,
        threshold=champion.threshold,
        rows=totals["rows"],
        predicted_churners=totals["predicted_churners"],
        replaced_rows=replaced,
        seconds=time.perf_counter() - started,
        shadow_version=shadow.version if shadow.written else None,
        shadow_rows=shadow.written,
        shadow_error=shadow.error,
    )


class BatchShadow:
    """The shadow (:func:`ml.tracking.shadow_of`) scored next to the champion, chunk by chunk, by
    :func:`score`. The shadow is an experiment: when it cannot be loaded or scored (refused by the safe
    loader, or needing features the frame lacks), ``error`` says why, none of its rows are written, and the
    champion's scores are written anyway."""

    def __init__(self, model=None, alias: str | None = None, error: str | None = None):
        self.model, self.alias, self.error = model, alias, error
        self.version = str(model.version) if model is not None else None
        self.written = 0
        self._parts: list[pd.DataFrame] = []

    @classmethod
    def load(cls, settings: Settings) -> BatchShadow:
        try:
            client = configure(settings)
            found = shadow_of(client, settings.model_name)
            if found is None:
                return cls()
            return cls(load_version(settings, found[0].version, client), found[1])
        except Exception as exc:  # noqa: BLE001 - the shadow is an experiment: the champion's scores are written anyway
            return cls(error=cls._failed(exc))

    @staticmethod
    def _failed(exc: Exception) -> str:
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        log.warning("the shadow was not scored (the champion's scores are written): %s", error)
        return error

    def add(self, frame: pd.DataFrame, rows: pd.DataFrame) -> None:
        """Score the users of ``frame`` (one chunk, in the order of the champion's ``rows``)."""
        if self.model is None or self.error is not None:
            return
        try:
            if list(frame["user_id"].astype(str)) != list(rows["user_id"]):
                raise MLError("the shadow's frame and the champion's scores list different users")
            proba = self.model.predict_proba(frame)
        except Exception as exc:  # noqa: BLE001 - as in load
            self.error, self._parts = self._failed(exc), []
            return
        self._parts.append(
            pd.DataFrame(
                {
                    "user_id": rows["user_id"].to_numpy(),
                    "as_of": rows["as_of"].to_numpy(),
                    "champion_version": rows["model_version"].astype(int).to_numpy(),
                    "champion_probability": rows["churn_probability"].astype(float).to_numpy(),
                    "shadow_version": int(self.model.version),
                    "shadow_probability": np.asarray(proba, dtype=float),
                    "source": BATCH,
                    "scored_at": rows["scored_at"].to_numpy(),
                }
            )
        )

    def rows(self) -> pd.DataFrame | None:
        """Every chunk's rows (None: no shadow, or it failed); called once every chunk is scored."""
        if self.model is None or self.error is not None or not self._parts:
            return None
        out = pd.concat(self._parts, ignore_index=True)
        self._parts, self.written = [], len(out)
        log.info("shadow %s v%s scored next to the champion", self.alias, self.version)
        return out


def write_shadow_rows(conn, shadow: pd.DataFrame) -> None:
    """Replace the batch rows of the months and shadow version in ``shadow`` with its rows (in the caller's
    transaction)."""
    if not len(shadow):
        return
    if conn.execute("select to_regclass(%s)", (SHADOW_SCORES,)).fetchone()[0] is None:
        raise MLError(
            f"the warehouse has no {SHADOW_SCORES} table yet (a warehouse built by an earlier version): "
            "run `streamflow build` first, it creates the table"
        )
    for as_of, version in shadow[["as_of", "shadow_version"]].drop_duplicates().itertuples(index=False):
        conn.execute(
            f"delete from {SHADOW_SCORES} where as_of = %s and shadow_version = %s and source = %s",
            (as_of, int(version), BATCH),
        )
    with conn.cursor().copy(f"copy {SHADOW_SCORES} ({', '.join(SHADOW_COLUMNS)}) from stdin") as copy:
        for rec in shadow.itertuples(index=False):
            copy.write_row(
                (
                    rec.user_id,
                    rec.as_of,
                    int(rec.champion_version),
                    float(rec.champion_probability),
                    int(rec.shadow_version),
                    float(rec.shadow_probability),
                    rec.source,
                    rec.scored_at,
                )
            )


def read_scores(settings: Settings, as_of: date) -> pd.DataFrame:
    """The stored scores of ``as_of`` (empty when the month was not scored)."""
    with connect(settings) as conn:
        if not _table_exists(conn):
            return pd.DataFrame(columns=list(COLUMNS))
        cur = conn.execute(
            f"select {', '.join(COLUMNS)} from {CHURN_SCORES} where as_of = %s order by user_id", (as_of,)
        )
        return pd.DataFrame(cur.fetchall(), columns=list(COLUMNS))


def _has_reasons(conn) -> bool:
    schema, table = CHURN_SCORES.split(".")
    found = conn.execute(
        "select 1 from information_schema.columns where table_schema = %s and table_name = %s "
        "and column_name = 'reasons'",
        (schema, table),
    ).fetchone()
    return found is not None


def _table_exists(conn) -> bool:
    return conn.execute("select to_regclass(%s)", (CHURN_SCORES,)).fetchone()[0] is not None
