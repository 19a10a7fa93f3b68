"""What a run optimises and how it is scored: the loss, the per-batch training statistic, and the metrics per split,
for classification (cross-entropy, optionally class-weighted; accuracy, macro F1, ROC AUC for two classes) and
regression (MSE, L1 or Huber on standardised targets; MAE, RMSE and R² in the target's own units)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maasctl.data import Dataset
from maasctl.errors import UsageError
from maasctl.metrics import classification_scores, regression_metrics
from maasctl.preprocess import destandardize

CLASSIFICATION_METRICS = ("val_accuracy", "val_loss", "val_macro_f1", "val_roc_auc")
REGRESSION_METRICS = ("val_mae", "val_rmse", "val_r2", "val_loss")
LOWER_IS_BETTER = ("val_loss", "val_mae", "val_rmse")


class Objective:
    """Built from the recipe's train section and the data; a recipe that asks for something its task lacks
    (an MSE loss for classes, val_accuracy for a regression) is refused here, before anything is written."""

    def __init__(self, cfg: Any, data: Dataset, device: torch.device) -> None:
        self.task, self.target, self.num_classes = data.task, data.target, data.num_classes
        regression = self.task == "regression"
        self.loss_name = cfg.loss if cfg.loss != "auto" else ("mse" if regression else "cross_entropy")
        self.best_metric = (
            cfg.best_metric if cfg.best_metric != "auto" else ("val_rmse" if regression else "val_accuracy")
        )
        fits = REGRESSION_METRICS if regression else CLASSIFICATION_METRICS
        problems = []
        if (self.loss_name == "cross_entropy") == regression:
            problems.append(f"train.loss {self.loss_name} does not suit a {self.task} task")
        if self.best_metric not in fits:
            problems.append(f"train.best_metric {self.best_metric}: a {self.task} run offers {', '.join(fits)}")
        if self.best_metric == "val_roc_auc" and self.num_classes != 2:
            problems.append(f"train.best_metric val_roc_auc needs two classes; this data has {self.num_classes}")
        if regression and (cfg.class_weights != "none" or cfg.label_smoothing):
            problems.append("train.class_weights and train.label_smoothing are for classification")
        if problems:
            raise UsageError("; ".join(problems) + f" (the task is {self.task}; see `maasctl recipe show`)")
        self.label_smoothing, self.huber_delta = cfg.label_smoothing, cfg.huber_delta
        self.weight = None
        if cfg.class_weights == "balanced":
            counts = np.bincount(data.train.y, minlength=self.num_classes).astype(np.float64)
            weights = len(data.train.y) / (self.num_classes * np.maximum(counts, 1))
            self.weight = torch.tensor(weights, dtype=torch.float32, device=device)
        self.train_column = "train_mae" if regression else "train_accuracy"
        self.val_columns = ["loss", "mae", "rmse", "r2"] if regression else ["loss", "accuracy", "macro_f1"]
        if self.num_classes == 2:
            self.val_columns.append("roc_auc")

    def loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.loss_name == "cross_entropy":
            return F.cross_entropy(
                out, y, weight=self.weight, label_smoothing=self.label_smoothing, reduction=reduction
            )
        pred = out.float()[:, 0]
        if self.loss_name == "mse":
            return F.mse_loss(pred, y, reduction=reduction)
        if self.loss_name == "l1":
            return F.l1_loss(pred, y, reduction=reduction)
        return F.huber_loss(pred, y, delta=self.huber_delta, reduction=reduction)

    def train_loss(self, out: torch.Tensor, target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The training step's loss; `x` is the batch the model saw (a DistillObjective runs its teacher on it)."""
        return self.loss(out, target)

    def batch_sum(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training statistic's sum over a batch: correct predictions, or absolute errors in target units."""
        if self.task == "regression":
            return (out.detach().float()[:, 0] - y).abs().sum() * self.target["std"]
        return (out.argmax(1) == y).sum()

    def scores(self, y: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
        """Metrics of one split from the model's raw outputs (numpy; the same functions `evaluate` uses)."""
        if self.task == "regression":
            actual, predicted = destandardize(y, self.target), destandardize(outputs[:, 0], self.target)
            return {**regression_metrics(actual, predicted), "actual": actual, "predicted": predicted}
        return classification_scores(y, outputs, self.num_classes)

    def score(self, row: dict[str, Any]) -> list[float]:
        """Larger is better; ties on accuracy, F1 or AUC go to the lower validation loss."""
        value = row.get(self.best_metric)
        if value is None:
            value = -np.inf
        elif self.best_metric in LOWER_IS_BETTER:
            value = -value
        return [float(value), -row["val_loss"]]
