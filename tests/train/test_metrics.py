from __future__ import annotations

import numpy as np
import pytest

from maasctl.metrics import classification_metrics


def test_metrics_match_a_hand_computed_example():
    # class 0: 2 right, 1 called 1; class 1: 1 right; class 2: never predicted, 1 called 1
    y_true = np.array([0, 0, 0, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1])
    m = classification_metrics(y_true, y_pred, 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    precision = [1.0, 1 / 3, 0.0]
    recall = [2 / 3, 1.0, 0.0]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall)]
    assert m["macro_precision"] == pytest.approx(np.mean(precision))
    assert m["macro_recall"] == pytest.approx(np.mean(recall))
    assert m["macro_f1"] == pytest.approx(np.mean(f1))


def test_roc_auc_and_regression_metrics_by_hand():
    from maasctl.metrics import regression_metrics, roc_auc

    # pairs (positive, negative) ranked right: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4); wrong: (0.35 < 0.4) -> 3/4
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.9])) == pytest.approx(0.75)  # a tie counts half
    assert roc_auc(np.array([1, 1]), np.array([0.2, 0.3])) is None  # one class: undefined
    m = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.0, 4.0]))
    assert m["mae"] == pytest.approx(1.5 / 4)
    assert m["rmse"] == pytest.approx(np.sqrt(1.25 / 4))
    assert m["r2"] == pytest.approx(1 - 1.25 / 5)  # total sum of squares around 2.5: 5
