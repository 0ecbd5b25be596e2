"""Model quality: the champion against the oracle (classification metrics live in :mod:`ml.metrics`).

The oracle files hold the generator's true churn probabilities. Only :func:`evaluate` reads them: they
measure how close the model gets to the best possible ranking, never what it learns from.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ml.dataset import FeastSource, FeatureSource, periods_up_to
from ml.errors import MLError
from ml.threads import limited_threads
from ml.tracking import load_model_alias
from streamflow.core.names import CHAMPION
from streamflow.core.progress import SILENT, Progress
from streamflow.core.settings import Settings


# ---------------------------------------------------------------------------------------
# champion against the oracle
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeriodQuality:
    period: date
    rows: int
    churners: int
    model_roc_auc: float
    oracle_roc_auc: float
    role: str  # "training", "validation" or "unseen" for the champion

    @property
    def ratio(self) -> float:
        return self.model_roc_auc / self.oracle_roc_auc

    def as_dict(self) -> dict:
        d = asdict(self)
        d["period"] = self.period.isoformat()
        d["ratio"] = self.ratio
        return d


@dataclass(frozen=True)
class Evaluation:
    as_of: date
    model_version: str
    oracle_dir: Path
    periods: list[PeriodQuality]
    seconds: float

    def as_dict(self) -> dict:
        return {
            "as_of": self.as_of.isoformat(),
            "model_version": self.model_version,
            "oracle_dir": str(self.oracle_dir),
            "periods": [p.as_dict() for p in self.periods],
        }


def oracle_folder(settings: Settings, oracle_dir: Path | None = None) -> Path:
    """The folder holding period_<as_of>.csv: ``oracle_dir`` (or settings), or its ``oracle/`` subfolder."""
    base = Path(oracle_dir or settings.oracle_dir or settings.home / "drops")
    return base / "oracle" if (base / "oracle").is_dir() else base


def read_oracle(folder: Path, period: date) -> pd.DataFrame:
    """The generator's true churn probabilities for the users active at ``period``."""
    path = folder / f"period_{period.isoformat()}.csv"
    if not path.is_file():
        raise MLError(
            f"no oracle file {path.name} in {folder}: pass the folder `streamflow generate --out` wrote "
            "with --oracle (or set STREAMFLOW_ORACLE_DIR)"
        )
    oracle = pd.read_csv(path, dtype={"user_id": str})
    missing = {"user_id", "churn_probability"} - set(oracle.columns)
    if missing:
        raise MLError(f"{path} lacks the columns {sorted(missing)}")
    return oracle[["user_id", "churn_probability"]]


def compare_with_oracle(labelled: pd.DataFrame, model_proba, oracle: pd.DataFrame) -> tuple[float, float, int]:
    """(model ROC-AUC, oracle ROC-AUC, rows) on the labelled rows that the oracle also covers."""
    rows = labelled[["user_id", "churn_label"]].assign(model=np.asarray(model_proba))
    rows = rows.merge(oracle, on="user_id", how="inner", validate="one_to_one")
    if rows.empty or rows["churn_label"].nunique() < 2:
        raise MLError("the oracle and the labelled rows share no users with both outcomes: wrong oracle folder?")
    y = rows["churn_label"].astype(bool)
    return float(roc_auc_score(y, rows["model"])), float(roc_auc_score(y, rows["churn_probability"])), len(rows)


def evaluate(
    settings: Settings,
    as_of: date,
    *,
    oracle_dir: Path | None = None,
    source: FeatureSource | None = None,
    progress: Progress = SILENT,
) -> Evaluation:
    """The champion's ROC-AUC on every labelled period known at ``as_of``, next to the oracle's."""
    started = time.perf_counter()
    source = source or FeastSource(settings)
    folder = oracle_folder(settings, oracle_dir)
    if not folder.is_dir():
        raise MLError(f"oracle folder {folder} does not exist: pass --oracle DIR (the folder of `streamflow generate`)")
    progress.start("loading the champion")
    champion = load_model_alias(settings, CHAMPION)
    periods = periods_up_to(source.label_periods(), as_of)
    if not periods:
        raise MLError(f"no labelled period before {as_of}: labels for a month arrive with the next drop")
    trained_on = set(champion.lineage.get("train_periods", []))
    validated_on = set(champion.lineage.get("validation_periods", []))
    out = []
    for period in periods:
        progress.start(f"scoring period {period}")
        frame = source.training_frame([period])
        with limited_threads(settings):
            proba = champion.predict_proba(frame)
        model_auc, oracle_auc, n = compare_with_oracle(frame, proba, read_oracle(folder, period))
        key = period.isoformat()
        role = "training" if key in trained_on else "validation" if key in validated_on else "unseen"
        out.append(PeriodQuality(period, n, int(frame["churn_label"].sum()), model_auc, oracle_auc, role))
    return Evaluation(as_of, champion.version, folder, out, time.perf_counter() - started)
