"""Which examples a model sees: labelled periods known at an as_of, the validation split, a data digest.

A training example is (user, period P): features as of P and the label with period_start = P. Labels
for P arrive with the next drop, so the run for as_of M may use every period P < M. The pure
functions here decide periods and splits; :class:`FeastSource` is the production path to the data.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Literal, Protocol

import pandas as pd
import psycopg
from sklearn.model_selection import train_test_split

from ml.errors import MLError
from streamflow.core.db import connect
from streamflow.core.names import LABELS_MART, MART_SCHEMA
from streamflow.core.settings import Settings
from streamflow.features import offline, store
from streamflow.features.store import FeaturesError

KEY_COLUMNS = ("user_id", "as_of")
LABEL = "churn_label"
DIGEST_ROWS = 50_000  # rows of CSV text held at a time while a frame is hashed


# ---------------------------------------------------------------------------------------
# months and periods
# ---------------------------------------------------------------------------------------
def periods_up_to(available: Iterable[date], as_of: date) -> list[date]:
    """The labelled periods a run for ``as_of`` may train on: every period_start before as_of, oldest first."""
    return sorted({p for p in available if p < as_of})


@dataclass(frozen=True)
class ValidationPlan:
    """How rows are split: out-of-time (the latest period validates) or stratified within one period."""

    strategy: Literal["out_of_time", "stratified"]
    train_periods: tuple[date, ...]
    validation_periods: tuple[date, ...]


def plan_validation(periods: Iterable[date]) -> ValidationPlan:
    """Out-of-time validation on the latest period when two or more exist, else a stratified split."""
    ps = tuple(sorted(set(periods)))
    if not ps:
        raise MLError("no labelled period to train on")
    if len(ps) == 1:
        return ValidationPlan("stratified", ps, ps)
    return ValidationPlan("out_of_time", ps[:-1], ps[-1:])


def split_frame(
    frame: pd.DataFrame, plan: ValidationPlan, *, fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a training frame (user_id, as_of, churn_label, features...) into (train, validation).

    Rows are put in canonical order first, so the split and everything fitted on it do not depend on
    the order the feature store returned them in.
    """
    frame = canonical_order(frame)
    if plan.strategy == "out_of_time":
        period = frame["as_of"].map(_as_date)
        is_valid = period.isin(set(plan.validation_periods))
        train, valid = frame[~is_valid], frame[is_valid]
    else:
        counts = frame[LABEL].value_counts()
        if len(counts) < 2 or counts.min() < 2:
            raise MLError(
                f"a stratified split needs at least two churners and two non-churners; the period has "
                f"{int(counts.get(True, 0))} churners and {int(counts.get(False, 0))} non-churners"
            )
        train, valid = train_test_split(frame, test_size=fraction, random_state=seed, stratify=frame[LABEL])
        train, valid = canonical_order(train), canonical_order(valid)
    for name, part in (("training", train), ("validation", valid)):
        n_pos = int(part[LABEL].sum())
        if n_pos == 0 or n_pos == len(part):
            raise MLError(
                f"the {name} rows ({len(part)}) hold only one class ({n_pos} churners): ROC-AUC is undefined. "
                "Ingest and build more months."
            )
    return train.reset_index(drop=True), valid.reset_index(drop=True)


def _as_date(value) -> date:
    return value.date() if hasattr(value, "date") else value


def canonical_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by (as_of, user_id): the one order every fit, digest and artifact uses."""
    keys = [c for c in ("as_of", "user_id") if c in frame.columns]
    return frame.sort_values(keys, kind="mergesort").reset_index(drop=True) if keys else frame


def frame_digest(frame: pd.DataFrame) -> str:
    """sha256 of a canonical serialization: rows by (as_of, user_id), columns by name, fixed formats.

    Two frames with the same content have the same digest whatever their row or column order.
    """
    canon = canonical_order(frame)
    canon = canon[sorted(canon.columns)]
    digest = hashlib.sha256()
    # the CSV text of the whole frame, hashed DIGEST_ROWS rows at a time (the same bytes, never all in memory)
    for start in range(0, max(len(canon), 1), DIGEST_ROWS):
        part = canon.iloc[start : start + DIGEST_ROWS]
        text = part.to_csv(
            index=False, header=start == 0, float_format="%.12g", date_format="%Y-%m-%dT%H:%M:%S%z", lineterminator="\n"
        )
        digest.update(text.encode("utf-8"))
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# where the data comes from
# ---------------------------------------------------------------------------------------
class FeatureSource(Protocol):
    """What training, scoring, drift and evaluation need from the data platform."""

    service: str

    def label_periods(self) -> list[date]: ...

    def training_frame(self, periods: list[date]) -> pd.DataFrame: ...

    def feature_frame(self, as_of: date) -> pd.DataFrame: ...

    def model_features(self) -> list[str]: ...


@dataclass
class FeastSource:
    """The production path: label periods from the warehouse, features point-in-time through Feast."""

    settings: Settings
    service: str = field(default="")

    def __post_init__(self) -> None:
        self.service = self.service or self.settings.feature_service

    def label_periods(self) -> list[date]:
        try:
            with connect(self.settings) as conn:
                rows = conn.execute(
                    # period_start is a business timestamp (00:00 UTC of the period's as_of)
                    f"select distinct (period_start at time zone 'UTC')::date from {MART_SCHEMA}.{LABELS_MART} "
                    "order by 1"
                ).fetchall()
        except psycopg.errors.UndefinedTable:
            raise MLError(
                f"the warehouse has no {MART_SCHEMA}.{LABELS_MART} table yet: "
                "run `streamflow ingest` and `streamflow build` first"
            ) from None
        except psycopg.OperationalError as exc:
            raise MLError(
                f"the warehouse is not reachable ({str(exc).strip().splitlines()[0]}): "
                "start it with `streamflow stack up`"
            ) from None
        return [r[0] for r in rows]

    def training_frame(self, periods: list[date]) -> pd.DataFrame:
        with _feature_errors():
            return offline.training_frame(self.settings, periods, service=self.service)

    def feature_frame(self, as_of: date) -> pd.DataFrame:
        with _feature_errors():
            return offline.feature_frame(self.settings, as_of, service=self.service)

    def model_features(self) -> list[str]:
        with _feature_errors():
            return [name for _view, name in store.service_features(self.settings, self.service)]


@contextlib.contextmanager
def _feature_errors() -> Iterator[None]:
    """The feature store's user-facing errors, as this package's."""
    try:
        yield
    except FeaturesError as exc:
        raise MLError(str(exc)) from None
