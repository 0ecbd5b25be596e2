"""The compiled scorer: rows of feature values -> churn probabilities, without the pipeline's overhead.

:func:`compile_scorer` turns the trained scikit-learn pipeline (ColumnTransformer -> classifier) into plain
arithmetic at load time: imputation, scaling and one-hot encoding become look-ups, and a HistGradientBoosting
or logistic-regression classifier is evaluated with numpy directly. The result is checked against the
pipeline's own ``predict_proba`` on the logged input example and on random rows; any difference falls back
to calling the classifier on the encoded rows, then to the full pipeline.

The same arithmetic gives the reasons of a prediction (:meth:`Scorer.explain`): each feature's exact contribution
to the margin, path attributions over the compiled trees or the terms of the weighted sum (:mod:`ml.explain`),
checked at load to add up to the margin with the base; a model without such a decomposition scores without them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from ml.explain import Explainer, LinearTerms, TreePaths, group_matrix, terms_kind

log = logging.getLogger("streamflow.serving.model")

CHECK_ROWS = 256  # random rows the compiled scorer is checked on at load
CHECK_TOLERANCE = 1e-12  # largest probability difference accepted against the pipeline
REASONS_TOLERANCE = 1e-9  # largest |base + sum(contributions) - margin| accepted (log-odds)

Row = Mapping[str, Any]


def canonical_frame(rows: Sequence[Row], features: list[str]) -> pd.DataFrame:
    """The frame the pipeline scores: one column per model feature in the model's order, missing values as NaN."""
    frame = pd.DataFrame.from_records([{f: r.get(f) for f in features} for r in rows], columns=features)
    return frame.fillna(value=np.nan)


class _Encoder:
    """The ColumnTransformer as look-ups: numeric columns imputed and scaled, categorical ones one-hot."""

    def __init__(
        self,
        numeric: list[tuple[str, int, float, float, float]],
        categorical: list[tuple[str, dict[Any, int], Any]],
        width: int,
    ):
        self.numeric = numeric  # (feature, output index, fill, mean, scale)
        self.categorical = categorical  # (feature, value -> output index, fill value)
        self.width = width

    def encode(self, rows: Sequence[Row]) -> np.ndarray:
        out = np.zeros((len(rows), self.width))
        nan = math.nan
        for i, row in enumerate(rows):
            line = out[i]
            for name, col, fill, mean, scale in self.numeric:
                value = row.get(name)
                x = nan if value is None else float(value)
                if x != x:  # NaN: imputed like SimpleImputer
                    x = fill
                line[col] = (x - mean) / scale
            for name, index, fill in self.categorical:
                value = row.get(name)
                if value is None or (isinstance(value, float) and value != value):
                    value = fill
                col = index.get(value)
                if col is not None:  # an unknown category is all zeros (handle_unknown="ignore")
                    line[col] = 1.0
        return out


def _encoder(pre, features: list[str]) -> _Encoder | None:
    """An encoder equal to a fitted ColumnTransformer of [imputer, scaler] and [imputer, one-hot] pipelines,
    or None when the transformer holds anything else."""
    if not isinstance(pre, ColumnTransformer):
        return None
    numeric: list[tuple[str, int, float, float, float]] = []
    categorical: list[tuple[str, dict[Any, int], Any]] = []
    width = 0
    for name, transformer, columns in pre.transformers_:
        if isinstance(transformer, str):
            if transformer == "drop" or len(columns) == 0:
                continue
            return None  # "passthrough"
        if not isinstance(columns, list | tuple) or not all(isinstance(c, str) and c in features for c in columns):
            return None
        steps = [s for _n, s in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]
        block = pre.output_indices_[name]
        if len(steps) != 2 or not isinstance(steps[0], SimpleImputer) or steps[0].add_indicator:
            return None
        imputer, last = steps
        if not (isinstance(imputer.missing_values, float) and math.isnan(imputer.missing_values)):
            return None
        if isinstance(last, StandardScaler):
            fills = np.asarray(imputer.statistics_, dtype=float)
            if len(fills) != len(columns) or not np.all(np.isfinite(fills)):
                return None
            means = last.mean_ if last.with_mean else np.zeros(len(columns))
            scales = last.scale_ if last.with_std else np.ones(len(columns))
            for j, column in enumerate(columns):
                numeric.append((column, block.start + j, float(fills[j]), float(means[j]), float(scales[j])))
            width = max(width, block.stop)
        elif isinstance(last, OneHotEncoder):
            if (
                last.drop is not None
                or last.handle_unknown != "ignore"
                or last.min_frequency is not None
                or last.max_categories is not None
                or imputer.strategy != "constant"
            ):
                return None
            offset = block.start
            for j, column in enumerate(columns):
                cats = list(last.categories_[j])
                categorical.append((column, {c: offset + k for k, c in enumerate(cats)}, imputer.statistics_[j]))
                offset += len(cats)
            if offset != block.stop:
                return None
            width = max(width, block.stop)
        else:
            return None
    return _Encoder(numeric, categorical, width)


class _Trees(TreePaths):
    """A binary HistGradientBoosting classifier evaluated with numpy (:class:`ml.explain.TreePaths`)."""

    def proba(self, X: np.ndarray) -> np.ndarray:
        return expit(self.margin(X))


class _Linear(LinearTerms):
    """A binary logistic regression as one weighted sum per row and a sigmoid (:class:`ml.explain.LinearTerms`).
    The sum runs row by row, so a user's probability does not depend on how many rows are scored with it (a
    matrix product may round the last digit differently for different batch sizes)."""

    def proba(self, X: np.ndarray) -> np.ndarray:
        return expit(self.margin(X))


def _compiled_classifier(clf, width: int):
    kind = terms_kind(clf, width)
    if kind is TreePaths:
        return _Trees(clf)
    if kind is LinearTerms:
        return _Linear(clf)
    return None


@dataclass
class Scorer:
    """Churn probabilities for rows of feature values ({feature: value}), by the fastest path that was shown
    equal to the pipeline: ``compiled`` (numpy only), ``encoded`` (look-up encoding, then the classifier's own
    predict_proba) or ``pipeline`` (the full scikit-learn pipeline on a frame).

    :meth:`explain` also gives each feature's contribution to the margin (log-odds): from the same walk of the
    compiled trees or the same weighted sum (``compiled``), or from :class:`ml.explain.Explainer` on the
    pipeline otherwise. ``base`` is None when the model has no exact decomposition (no reasons then)."""

    kind: str
    features: list[str]
    pipeline: Any
    encoder: _Encoder | None = None
    classifier: Any = None  # _Trees / _Linear for "compiled", the fitted estimator for "encoded"
    max_difference: float = 0.0  # largest difference to the pipeline seen at load
    base: float | None = None  # the margin every explanation starts from (None: no reasons)
    groups: np.ndarray | None = None  # encoded columns x features ("compiled")
    explainer: Explainer | None = None  # the pipeline's decomposition (other kinds)
    max_gap: float = 0.0  # largest |base + sum(contributions) - margin| seen at load

    def proba(self, rows: Sequence[Row]) -> np.ndarray:
        if self.kind == "compiled":
            return self.classifier.proba(self.encoder.encode(rows))
        if self.kind == "encoded":
            return self.classifier.predict_proba(self.encoder.encode(rows))[:, 1]
        return self.pipeline.predict_proba(canonical_frame(rows, self.features))[:, 1]

    def explain(self, rows: Sequence[Row]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probability, margin, contribution per feature) of each row; ``base + contributions.sum(1) == margin``.
        The probability is the one :meth:`proba` gives."""
        if self.kind == "compiled" and self.groups is not None:
            margin, encoded = self.classifier.explain(self.encoder.encode(rows))
            return expit(margin), margin, encoded @ self.groups
        if self.explainer is None:
            raise ValueError(f"model scorer {self.kind!r} has no reasons")
        margin, contributions = self.explainer.explain(canonical_frame(rows, self.features))
        return self.proba(rows), margin, contributions


def _encoded_groups(encoder: _Encoder, features: list[str]) -> np.ndarray | None:
    """Encoded columns x features for the compiled encoder (each one-hot column belongs to its feature)."""
    owner = np.full(encoder.width, -1, dtype=np.intp)
    for name, col, *_rest in encoder.numeric:
        owner[col] = features.index(name)
    for name, index, _fill in encoder.categorical:
        for col in index.values():
            owner[col] = features.index(name)
    return None if np.any(owner < 0) else group_matrix(owner, len(features))


def _attach_reasons(scorer: Scorer, rows: Sequence[Row]) -> None:
    """Give ``scorer`` its decomposition when base + contributions equals the margin on ``rows`` (and, off the
    compiled path, the margin is the pipeline's); otherwise it scores without reasons."""
    try:
        if scorer.kind == "compiled":
            scorer.groups = _encoded_groups(scorer.encoder, scorer.features)
            scorer.base = scorer.classifier.base if scorer.groups is not None else None
        else:
            scorer.explainer = Explainer.of(scorer.pipeline, scorer.features)
            scorer.base = scorer.explainer.base
        if scorer.base is None or not rows:
            return
        proba, margin, contributions = scorer.explain(rows)
        gap = float(np.max(np.abs(scorer.base + contributions.sum(axis=1) - margin)))
        drift = float(np.max(np.abs(expit(margin) - scorer.proba(rows))))
        if gap <= REASONS_TOLERANCE and drift <= CHECK_TOLERANCE:
            scorer.max_gap = gap
            return
        log.warning("reasons disabled: contributions miss the margin by %.3g (probability by %.3g)", gap, drift)
    except Exception as exc:  # noqa: BLE001 - a model without a decomposition still scores, without reasons
        log.info("reasons are not available for this model: %s", exc)
    scorer.base, scorer.groups, scorer.explainer = None, None, None


def check_rows(pipeline, features: list[str], count: int = CHECK_ROWS, seed: int = 0) -> list[dict[str, Any]]:
    """Random rows around what the pipeline was fitted on: numbers drawn from each column's mean and spread
    (some missing, some integral), categories from the known ones plus unknown and missing values."""
    rng = np.random.default_rng(seed)
    steps = getattr(pipeline, "steps", [])
    encoder = _encoder(steps[0][1], features) if len(steps) > 1 else None
    spread: dict[str, tuple[float, float]] = {}
    categories: dict[str, list[Any]] = {}
    if encoder is not None:
        spread = {name: (mean, scale) for name, _c, _f, mean, scale in encoder.numeric}
        categories = {name: list(index) for name, index, _f in encoder.categorical}
    rows = []
    for i in range(count):
        row: dict[str, Any] = {}
        for name in features:
            roll = rng.random()
            if roll < 0.05:
                row[name] = None
            elif name in categories:
                known = categories[name]
                row[name] = "unknown-category" if roll > 0.95 or not known else known[rng.integers(len(known))]
            else:
                mean, scale = spread.get(name, (0.0, 1.0))
                x = float(rng.normal(mean, 2 * scale if scale > 0 else 1.0))
                row[name] = round(x) if i % 2 else x
        rows.append(row)
    return rows


def compile_scorer(pipeline, features: list[str], example: Sequence[Row] = (), *, fast: bool = True) -> Scorer:
    """The fastest scorer that agrees with ``pipeline.predict_proba`` on ``example`` and on random rows
    (``fast=False``: the pipeline itself)."""
    scorer = _fastest(pipeline, features, example, fast)
    _attach_reasons(scorer, list(example) + check_rows(pipeline, features))
    return scorer


def _fastest(pipeline, features: list[str], example: Sequence[Row], fast: bool) -> Scorer:
    fallback = Scorer("pipeline", features, pipeline)
    steps = getattr(pipeline, "steps", None)
    if not fast or not steps or len(steps) != 2:
        return fallback
    rows = list(example) + check_rows(pipeline, features)
    reference = pipeline.predict_proba(canonical_frame(rows, features))[:, 1]
    encoder = _encoder(steps[0][1], features)
    if encoder is None:
        log.info("model pipeline has an unsupported preprocessor: scoring with the full pipeline")
        return fallback
    clf = steps[1][1]
    candidates = []
    compiled = _compiled_classifier(clf, encoder.width)
    if compiled is not None:
        candidates.append(Scorer("compiled", features, pipeline, encoder, compiled))
    if hasattr(clf, "predict_proba"):
        candidates.append(Scorer("encoded", features, pipeline, encoder, clf))
    for scorer in candidates:
        try:
            got = scorer.proba(rows)
        except Exception as exc:  # noqa: BLE001 - any failure of a faster path means: use a slower one
            log.warning("%s scorer failed its check (%s): trying a slower one", scorer.kind, exc)
            continue
        difference = float(np.max(np.abs(got - reference))) if len(rows) else 0.0
        if got.shape == reference.shape and difference <= CHECK_TOLERANCE:
            scorer.max_difference = difference
            return scorer
        log.warning("%s scorer differs from the pipeline by %.3g: trying a slower one", scorer.kind, difference)
    return fallback
