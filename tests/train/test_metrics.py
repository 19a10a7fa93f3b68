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
