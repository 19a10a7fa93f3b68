"""Classification and regression metrics in numpy: the same numbers for a PyTorch checkpoint and for an ONNX model."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, Any]:
    cm = confusion_matrix(np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64), num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(0), cm.sum(1)
    # A class never predicted (or absent) has precision (recall) 0 by convention, as in scikit-learn.
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "confusion_matrix": cm.tolist(),
    }


def classification_scores(y_true: np.ndarray, logits: np.ndarray, num_classes: int) -> dict[str, Any]:
    """`classification_metrics` of the top-1 predictions, and for two classes the ROC AUC of class 1's score."""
    logits = np.asarray(logits, dtype=np.float64)
    metrics = classification_metrics(y_true, logits.argmax(1), num_classes)
    if num_classes == 2:
        metrics["roc_auc"] = roc_auc(y_true, logits[:, 1] - logits[:, 0])  # softmax's order for class 1
    return metrics


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve for class 1 against class 0 (the Mann-Whitney statistic, ties counted half);
    None when a split holds only one of the classes."""
    positive = np.asarray(y_true) == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based ranks, ties sharing their mean
    ranks = average_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R² (1 - residual / total sum of squares) in the target's own units."""
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    err = y_pred - y_true
    total = float(((y_true - y_true.mean()) ** 2).sum())
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": 1 - float((err**2).sum()) / total if total > 0 else 0.0,
    }
