"""Reasons for a prediction: each feature's contribution to the model's margin (log-odds), exactly.

For a row x the trained pipeline computes a margin m(x) = log(p / (1 - p)). The contributions split it:
``base + sum(contributions) == m(x)`` up to float rounding, for every model family the trainer produces.

- Logistic regression: the encoded inputs are standardized numbers and one-hot columns, so the term
  ``coef_j * z_j`` is column j's contribution and the intercept is the base: the margin of a user at the
  training means (the regularized one-hot coefficients of a category sum to zero across its values).
- HistGradientBoosting: path attributions (Saabas). Every node carries the expected margin of the training
  rows that reached it (leaf values weighted by the training counts below the node); walking a row's path,
  each split moves the expectation from the parent's to the child's, and that move is credited to the split's
  feature. Over a path the moves telescope to ``leaf - root``, so the base (the baseline plus every root's
  expectation) plus the credits is the margin.

Contributions of encoded columns are summed back to the model's features (one-hot columns to their
categorical feature). :class:`TreePaths` and :class:`LinearTerms` are the arithmetic on encoded rows, shared by
the API's compiled scorer; :class:`Explainer` runs a whole fitted pipeline on a frame (batch scoring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from ml.errors import MLError

DEFAULT_REASONS = 3  # features per direction (up, down) unless asked otherwise
MAX_REASONS = 10
UP, DOWN = "up", "down"
PATH_SUM_LIMIT = 4_000_000  # rows x trees x columns gathered at once when explaining trees (32 MB)


class TreePaths:
    """A binary HistGradientBoostingClassifier as flat arrays: every tree walked at once, level by level.

    ``margin`` adds the leaf values in the classifier's own order (baseline, then tree by tree), so it is the
    classifier's raw prediction bit for bit; ``explain`` walks the same paths and credits each split's change
    of expected margin to its feature.
    """

    def __init__(self, clf):
        predictors = [p[0] for p in clf._predictors]
        size = max(len(p.nodes) for p in predictors)
        n = len(predictors)
        feature = np.zeros((n, size), dtype=np.intp)
        threshold = np.zeros((n, size))
        left = np.zeros((n, size), dtype=np.intp)
        right = np.zeros((n, size), dtype=np.intp)
        missing_left = np.zeros((n, size), dtype=bool)
        value = np.zeros((n, size))
        expected = np.zeros((n, size))
        width = int(clf.n_features_in_)
        paths = np.zeros((n, size, width))
        depth = 0
        for t, predictor in enumerate(predictors):
            nodes = predictor.nodes
            base = t * size
            k = len(nodes)
            leaf = nodes["is_leaf"].astype(bool)
            feature[t, :k] = nodes["feature_idx"]
            threshold[t, :k] = nodes["num_threshold"]
            # leaves (and padding) point at themselves, so a walk simply stays once it arrives
            own = base + np.arange(size)
            left[t] = own
            right[t] = own
            left[t, :k] = np.where(leaf, own[:k], base + nodes["left"].astype(np.intp))
            right[t, :k] = np.where(leaf, own[:k], base + nodes["right"].astype(np.intp))
            missing_left[t, :k] = nodes["missing_go_to_left"].astype(bool)
            value[t, :k] = nodes["value"]
            expected[t, :k] = node_expectations(nodes)
            paths[t, :k] = path_credits(nodes, expected[t, :k], width)
            depth = max(depth, int(nodes["depth"].max()))
        self.feature, self.threshold = feature.ravel(), threshold.ravel()
        self.left, self.right = left.ravel(), right.ravel()
        self.missing_left, self.value, self.expected = missing_left.ravel(), value.ravel(), expected.ravel()
        self.roots = np.arange(n, dtype=np.intp) * size
        self.depth = depth
        self.baseline = float(np.asarray(clf._baseline_prediction).ravel()[0])
        self.base = self.baseline + float(self.expected[self.roots].sum())
        self.width = width
        self.paths = paths.reshape(n * size, width)  # a node's path credits, by flat node index
        # The walk goes by doubled node ids (d = 2 * node): a level is one gather of the row's value, one
        # comparison and one gather of the child (d + 1: left, d: right). The row is laid out twice: missing
        # values as -inf in the first copy (they go left: -inf <= any threshold) and as NaN in the second (they go
        # right: NaN <= t is false); each node reads the copy its missing_go_to_left names.
        self._column2 = np.repeat(np.where(self.missing_left, self.feature, self.feature + width), 2)
        self._threshold2 = np.repeat(self.threshold, 2)
        self._child2 = np.empty(2 * len(self.left), dtype=np.intp)
        self._child2[0::2], self._child2[1::2] = 2 * self.right, 2 * self.left
        self._roots2 = 2 * self.roots

    def _step(self, flat: np.ndarray, offsets: np.ndarray, doubled: np.ndarray) -> np.ndarray:
        x = flat.take(offsets + self._column2.take(doubled))
        return self._child2.take(doubled + (x <= self._threshold2.take(doubled)))

    def _start(self, X: np.ndarray):
        n, width = X.shape
        twice = np.empty((n, 2 * width))
        twice[:, :width] = X
        np.copyto(twice[:, :width], -np.inf, where=np.isnan(X))
        twice[:, width:] = X
        offsets = (np.arange(n, dtype=np.intp) * (2 * width))[:, None]
        return twice.ravel(), offsets, np.tile(self._roots2, (n, 1))

    def _leaves(self, X: np.ndarray) -> np.ndarray:
        """The leaf each row reaches in each tree (rows x trees, flat node indexes)."""
        flat, offsets, doubled = self._start(X)
        for _ in range(self.depth):
            doubled = self._step(flat, offsets, doubled)
        return doubled >> 1

    def _margin_of(self, node: np.ndarray) -> np.ndarray:
        leaves = self.value.take(node)
        n = len(node)
        summed = np.add.accumulate(np.concatenate([np.full((n, 1), self.baseline), leaves], axis=1), axis=1)
        return summed[:, -1]

    def margin(self, X: np.ndarray) -> np.ndarray:
        return self._margin_of(self._leaves(X))

    def explain(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(margin per row, contribution per row and encoded column) from one walk of every tree: the leaves it
        reaches, then the credits of each leaf's path (precomputed at load) summed over the trees."""
        node = self._leaves(X)
        n, trees = node.shape
        if n * trees * self.width <= PATH_SUM_LIMIT:  # a request: one gather, one sum
            contributions = self.paths.take(node, axis=0).sum(axis=1)
        else:  # a batch: tree by tree, in bounded memory
            contributions = np.zeros((n, self.width))
            for t in range(trees):
                contributions += self.paths.take(node[:, t], axis=0)
        return self._margin_of(node), contributions


def path_credits(nodes, expected: np.ndarray, width: int) -> np.ndarray:
    """For each node of one tree, the credits collected from the root down to it: at every split on the way,
    the change of expected margin from the parent to the child, added to the split's feature (nodes x width).
    The credits of a leaf sum to its value minus the root's expectation."""
    credits = np.zeros((len(nodes), width))
    for i in range(len(nodes)):  # parents come before their children in the array
        if nodes["is_leaf"][i]:
            continue
        feature = int(nodes["feature_idx"][i])
        for child in (int(nodes["left"][i]), int(nodes["right"][i])):
            credits[child] = credits[i]
            credits[child, feature] += expected[child] - expected[i]
    return credits


def node_expectations(nodes) -> np.ndarray:
    """Each node's expected margin over the training rows that reached it: a leaf's value, or the
    count-weighted mean of its children's (children always come after their parent in the array)."""
    expected = nodes["value"].astype(float).copy()
    counts = nodes["count"].astype(float)
    for i in range(len(nodes) - 1, -1, -1):
        if nodes["is_leaf"][i]:
            continue
        left, right = int(nodes["left"][i]), int(nodes["right"][i])
        total = counts[left] + counts[right]
        if total > 0:
            expected[i] = (counts[left] * expected[left] + counts[right] * expected[right]) / total
        else:
            expected[i] = (expected[left] + expected[right]) / 2
    return expected


class LinearTerms:
    """A binary logistic regression: margin = intercept + sum of coef * encoded value. The sum runs row by row,
    so a user's margin does not depend on how many rows are scored with it."""

    def __init__(self, clf):
        self.coef = np.asarray(clf.coef_, dtype=float).ravel()
        self.intercept = float(np.asarray(clf.intercept_, dtype=float).ravel()[0])
        self.base = self.intercept
        self.width = len(self.coef)

    def margin(self, X: np.ndarray) -> np.ndarray:
        return (X * self.coef).sum(axis=1) + self.intercept

    def explain(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        terms = X * self.coef
        return terms.sum(axis=1) + self.intercept, terms


def terms_kind(clf, width: int) -> type[TreePaths] | type[LinearTerms] | None:
    """Which margin arithmetic decomposes a fitted binary classifier on ``width`` encoded columns exactly, or
    None (another family, multi-class, native categorical splits)."""
    classes = list(getattr(clf, "classes_", []))
    if len(classes) != 2 or getattr(clf, "n_features_in_", width) != width:
        return None
    if isinstance(clf, HistGradientBoostingClassifier):
        categorical = getattr(clf, "is_categorical_", None)
        if clf.n_trees_per_iteration_ != 1 or getattr(clf, "_preprocessor", None) is not None:
            return None
        if categorical is not None and np.any(categorical):
            return None
        return TreePaths
    if isinstance(clf, LogisticRegression) and np.asarray(clf.coef_).shape == (1, width):
        return LinearTerms
    return None


def classifier_terms(clf, width: int) -> TreePaths | LinearTerms | None:
    """The margin arithmetic of a fitted binary classifier (see :func:`terms_kind`), or None."""
    kind = terms_kind(clf, width)
    return kind(clf) if kind is not None else None


def column_groups(pre, features: list[str]) -> np.ndarray | None:
    """For each encoded column of a fitted ColumnTransformer, the index of the model feature it encodes
    (one-hot columns of a feature all point at it), or None when the transformer is not one of the trainer's."""
    if not isinstance(pre, ColumnTransformer):
        return None
    width = max((s.stop for s in pre.output_indices_.values()), default=0)
    owner = np.full(width, -1, dtype=np.intp)
    for name, transformer, columns in pre.transformers_:
        if isinstance(transformer, str):
            continue  # "drop" (the remainder): no output columns
        block = pre.output_indices_[name]
        last = transformer.steps[-1][1] if isinstance(transformer, Pipeline) else transformer
        sizes = [len(c) for c in last.categories_] if hasattr(last, "categories_") else [1] * len(columns)
        if sum(sizes) != block.stop - block.start or not all(c in features for c in columns):
            return None
        offset = block.start
        for column, size in zip(columns, sizes, strict=True):
            owner[offset : offset + size] = features.index(column)
            offset += size
    return None if np.any(owner < 0) else owner


def group_matrix(owner: np.ndarray, n_features: int) -> np.ndarray:
    """Encoded columns x features, 1 where the column belongs to the feature: ``C_encoded @ G`` sums them."""
    matrix = np.zeros((len(owner), n_features))
    matrix[np.arange(len(owner)), owner] = 1.0
    return matrix


@dataclass
class Explainer:
    """A fitted trainer pipeline split into its encoder, its margin arithmetic and its column groups."""

    pipeline: Any
    features: list[str]
    terms: TreePaths | LinearTerms
    groups: np.ndarray  # encoded columns x features

    @classmethod
    def of(cls, pipeline, features: list[str]) -> Explainer:
        steps = getattr(pipeline, "steps", None)
        if not steps or len(steps) != 2:
            raise MLError("reasons need a pipeline of the trainer's form: [preprocess, classifier]")
        owner = column_groups(steps[0][1], features)
        terms = classifier_terms(steps[1][1], len(owner)) if owner is not None else None
        if terms is None:
            raise MLError(f"reasons are not available for a {type(steps[1][1]).__name__} in this pipeline")
        return cls(pipeline, list(features), terms, group_matrix(owner, len(features)))

    def explain(self, frame: pd.DataFrame, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """(margin per row, contribution per row and feature) for the model's features of ``frame``, ``chunk``
        rows at a time (memory stays bounded for a month of users)."""
        margins, contributions = [np.zeros(0)], [np.zeros((0, len(self.features)))]
        for start in range(0, len(frame), chunk):
            part = frame.iloc[start : start + chunk][self.features]
            encoded = np.asarray(self.pipeline.steps[0][1].transform(part), dtype=float)
            margin, terms = self.terms.explain(encoded)
            margins.append(margin)
            contributions.append(terms @ self.groups)
        return np.concatenate(margins), np.concatenate(contributions)

    @property
    def base(self) -> float:
        return self.terms.base


def _plain(value: Any) -> Any:
    """A served value as JSON carries it: numpy scalars as Python ones, missing values (None, NaN, NA) as null."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def top_reasons(
    contributions: np.ndarray,
    values: Sequence[Any],
    features: Sequence[str],
    labels: dict[str, str],
    count: int = DEFAULT_REASONS,
) -> dict[str, list[dict[str, Any]]]:
    """The ``count`` features that push one row's margin up the most and the ``count`` that hold it down the
    most, largest first, each with its label, served value and contribution (log-odds)."""
    out: dict[str, list[dict[str, Any]]] = {UP: [], DOWN: []}
    if count <= 0:
        return out
    order = np.argsort(-contributions, kind="stable")
    for direction, picks in ((UP, order), (DOWN, order[::-1])):
        for j in picks[:count]:
            c = float(contributions[j])
            if (c <= 0.0) if direction == UP else (c >= 0.0):
                break
            name = features[j]
            out[direction].append(
                {"feature": name, "label": labels.get(name, name), "value": _plain(values[j]), "contribution": c}
            )
    return out
