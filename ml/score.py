"""Batch scoring: every user active at an as_of, scored by the champion, into ``ml.churn_scores``.

Idempotent per as_of: scoring a month again replaces that month's rows in one transaction, so
readers see either the old scores or the new ones. dbt declares the table as a source
(``dbt_project/models/staging/__ml_sources.yml``) and builds ``marts.churn_predictions`` on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from ml.errors import MLError

if TYPE_CHECKING:
    import pandas as pd

    from ml.dataset import FeatureSource
    from streamflow.core.settings import Settings

SCHEMA = "ml"
TABLE = "churn_scores"
COLUMNS = ("user_id", "as_of", "churn_probability", "churn_label_predicted", "model_version", "scored_at")

DDL = f"""
create schema if not exists {SCHEMA};
create table if not exists {SCHEMA}.{TABLE} (
    user_id text not null,
    as_of date not null,
    churn_probability double precision not null check (churn_probability between 0 and 1),
    churn_label_predicted boolean not null,
    model_version integer not null,
    scored_at timestamptz not null,
    primary key (as_of, user_id)
);
comment on table {SCHEMA}.{TABLE} is
    'Churn probability of every user active at as_of, scored by the champion model (streamflow score).';
"""


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


def score_frame(frame: pd.DataFrame, model, as_of: date, scored_at: datetime) -> pd.DataFrame:
    """The rows to store: one per user of ``frame``, in user_id order."""
    import pandas as pd

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
        }
    )


def write_scores(settings: Settings, as_of: date, rows: pd.DataFrame) -> int:
    """Replace the rows of ``as_of`` in ml.churn_scores with ``rows``; returns how many were replaced."""
    from streamflow.core.db import connect

    with connect(settings) as conn, conn.transaction():
        conn.execute(DDL)
        # one writer per table at a time; readers are not blocked
        conn.execute(f"lock table {SCHEMA}.{TABLE} in share row exclusive mode")
        replaced = conn.execute(f"delete from {SCHEMA}.{TABLE} where as_of = %s", (as_of,)).rowcount
        with conn.cursor().copy(f"copy {SCHEMA}.{TABLE} ({', '.join(COLUMNS)}) from stdin") as copy:
            for rec in rows.itertuples(index=False):
                copy.write_row(
                    (
                        rec.user_id,
                        rec.as_of,
                        float(rec.churn_probability),
                        bool(rec.churn_label_predicted),
                        int(rec.model_version),
                        rec.scored_at,
                    )
                )
    return replaced


def score(settings: Settings, as_of: date, *, source: FeatureSource | None = None, on_step=None) -> ScoreResult:
    """Score every user active at ``as_of`` with the champion and store the scores."""
    from ml.dataset import FeastSource
    from ml.tracking import CHAMPION, load_model_alias
    from ml.train import limited_threads

    step = on_step or (lambda _msg: None)
    started = time.perf_counter()
    source = source or FeastSource(settings)
    step("loading the champion")
    champion = load_model_alias(settings, CHAMPION)
    step(f"reading the features of users active at {as_of}")
    frame = source.feature_frame(as_of)
    if frame.empty:
        raise MLError(f"no active users at {as_of}: has this month been ingested and built (`streamflow build`)?")
    step(f"scoring {len(frame):,} users")
    with limited_threads(settings):
        rows = score_frame(frame, champion, as_of, datetime.now(UTC))
    replaced = write_scores(settings, as_of, rows)
    return ScoreResult(
        as_of=as_of,
        model_name=settings.model_name,
        model_version=champion.version,
        threshold=champion.threshold,
        rows=len(rows),
        predicted_churners=int(rows["churn_label_predicted"].sum()),
        replaced_rows=replaced,
        seconds=time.perf_counter() - started,
    )


def read_scores(settings: Settings, as_of: date) -> pd.DataFrame:
    """The stored scores of ``as_of`` (empty when the month was not scored)."""
    import pandas as pd

    from streamflow.core.db import connect

    with connect(settings) as conn:
        exists = conn.execute("select to_regclass(%s)", (f"{SCHEMA}.{TABLE}",)).fetchone()[0]
        if exists is None:
            return pd.DataFrame(columns=list(COLUMNS))
        cur = conn.execute(
            f"select {', '.join(COLUMNS)} from {SCHEMA}.{TABLE} where as_of = %s order by user_id", (as_of,)
        )
        return pd.DataFrame(cur.fetchall(), columns=list(COLUMNS))
