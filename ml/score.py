"""Batch scoring: every user active at an as_of, scored by the champion, into ``ml.churn_scores``.

Idempotent per as_of: scoring a month again replaces that month's rows in one transaction, so
readers see either the old scores or the new ones. The table has one definition, the dbt macro
``ensure_churn_scores_table`` (``dbt_project/macros/ml_churn_scores.sql``), which every
``streamflow build`` runs before the ``marts.churn_predictions`` view it feeds; dbt declares the
table as a source (``dbt_project/models/ml/__ml_sources.yml``). This module only writes rows.

Each row carries the prediction's top reasons (``reasons``, jsonb, the body the API answers: base, margin and the
features that push the risk up and hold it down the most, with label, value and contribution), computed from the
exact feature vector scored by :class:`ml.explain.Explainer`; the dbt mart ``churn_reasons`` aggregates them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd

from ml.dataset import FeastSource, FeatureSource
from ml.errors import MLError
from ml.explain import DEFAULT_REASONS, Explainer, top_reasons
from ml.threads import limited_threads
from ml.tracking import load_model_alias
from streamflow.core import runlog
from streamflow.core.db import connect
from streamflow.core.lock import pipeline_lock
from streamflow.core.names import CHAMPION, CHURN_SCORES
from streamflow.core.progress import SILENT, Progress
from streamflow.core.settings import Settings
from streamflow.features.labels import labels_from_docs

log = logging.getLogger("streamflow.ml.score")

COLUMNS = ("user_id", "as_of", "churn_probability", "churn_label_predicted", "model_version", "scored_at", "reasons")


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


def write_scores(settings: Settings, as_of: date, rows: pd.DataFrame | Iterable[pd.DataFrame]) -> int:
    """Replace the rows of ``as_of`` in ml.churn_scores with ``rows`` (a frame, or frames written one after the
    other, e.g. computed chunk by chunk while the transaction is open); returns how many were replaced."""
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
) -> Iterator[pd.DataFrame]:
    """:func:`score_frame` of ``frame`` ``chunk_rows`` users at a time, in user_id order: together exactly the
    rows of one :func:`score_frame` call, with only one chunk's probabilities and reasons in memory at a time.
    ``totals`` counts ``rows`` and ``predicted_churners`` as chunks are produced."""
    if frame["user_id"].duplicated().any():
        raise MLError(f"the feature frame at {as_of} has duplicate user_id rows")
    order = np.argsort(frame["user_id"].to_numpy(dtype=str), kind="mergesort")
    totals.update(rows=0, predicted_churners=0)
    for start in range(0, len(order), chunk_rows):
        rows = score_frame(frame.iloc[order[start : start + chunk_rows]], model, as_of, scored_at, labels)
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
        chunks = score_chunks(frame, champion, as_of, datetime.now(UTC), labels, settings.score_chunk_rows, totals)
        replaced = write_scores(settings, as_of, chunks)
    return ScoreResult(
        as_of=as_of,
        model_name=settings.model_name,
        model_version=champion.version,
        threshold=champion.threshold,
        rows=totals["rows"],
        predicted_churners=totals["predicted_churners"],
        replaced_rows=replaced,
        seconds=time.perf_counter() - started,
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
