"""Classification metrics and the decision threshold: what training, the model summary and the CLI report."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

# metric -> True when larger is better; the order is the display order
METRICS = {
    "roc_auc": True,
    "pr_auc": True,
    "log_loss": False,
    "brier": False,
    "f1": True,
    "precision": True,
    "recall": True,
    "threshold": True,
}


def best_threshold(y_true, proba) -> float:
    """The probability cut-off that maximises F1 on these rows (ties: the higher cut-off)."""
    precision, recall, thresholds = precision_recall_curve(np.asarray(y_true, dtype=bool), np.asarray(proba))
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = np.flatnonzero(f1 == f1.max())[-1]
    return float(thresholds[best])


def classification_metrics(y_true, proba, threshold: float) -> dict[str, float]:
    """ROC-AUC, PR-AUC, log-loss, Brier and F1/precision/recall at ``threshold``."""
    y = np.asarray(y_true, dtype=bool)
    p = np.clip(np.asarray(proba, dtype=float), 1e-15, 1 - 1e-15)
    predicted = p >= threshold
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "log_loss": float(log_loss(y, p, labels=[False, True])),
        "brier": float(brier_score_loss(y, p)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "threshold": float(threshold),
    }
