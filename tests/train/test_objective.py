"""What a run optimises per task: class weights, ROC AUC for two classes, regression losses and metrics, and the
recipes refused because their loss or best metric does not suit the task."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from maasctl.data import Dataset, Split
from maasctl.errors import UsageError
from maasctl.recipe import load_recipe
from maasctl.train.objective import Objective


def data_of(task: str, y: list, labels: list[str]) -> Dataset:
    x = np.zeros((len(y), 2), dtype=np.float32)
    split = Split(x, np.array(y, dtype=np.float32 if task == "regression" else np.int64))
    target = {"column": "t", "mean": 10.0, "std": 2.0} if task == "regression" else None
    return Dataset(
        split, split, split, labels=labels, preprocessing={}, input_kind="features", task=task, target=target
    )


def objective(data: Dataset, *overrides: str) -> Objective:
    return Objective(load_recipe(None, list(overrides)).train, data, torch.device("cpu"))


def test_balanced_class_weights_from_training_counts():
    o = objective(data_of("classification", [0, 0, 0, 1], ["a", "b"]), "train.class_weights=balanced")
    assert o.weight.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])
    assert o.val_columns == ["loss", "accuracy", "macro_f1", "roc_auc"]  # two classes: AUC beside the rest
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 1])
    expected = torch.nn.functional.cross_entropy(logits, y, weight=torch.tensor([2 / 3, 2.0]))
    assert o.loss(logits, y).item() == pytest.approx(expected.item())


def test_regression_losses_and_errors_in_target_units():
    data = data_of("regression", [0.0, 1.0], [])
    out, y = torch.tensor([[0.5], [3.0]]), torch.tensor([0.0, 1.0])
    assert objective(data).loss(out, y).item() == pytest.approx((0.25 + 4) / 2)  # auto: mse
    assert objective(data, "train.loss=l1").loss(out, y).item() == pytest.approx((0.5 + 2) / 2)
    assert objective(data, "train.loss=huber").loss(out, y).item() == pytest.approx((0.125 + 1.5) / 2)
    o = objective(data)
    assert o.best_metric == "val_rmse" and o.batch_sum(out, y).item() == pytest.approx((0.5 + 2) * 2.0)  # std 2
    scores = o.scores(np.array([0.0, 1.0]), np.array([[0.5], [3.0]]))
    assert scores["mae"] == pytest.approx(2.5) and scores["predicted"].tolist() == [11.0, 16.0]
    assert o.score({"val_rmse": 3.0, "val_loss": 1.0}) > o.score({"val_rmse": 4.0, "val_loss": 0.5})  # lower wins


@pytest.mark.parametrize(
    ("task", "override", "message"),
    [
        ("regression", "train.best_metric=val_accuracy", "a regression run offers val_mae, val_rmse, val_r2"),
        ("regression", "train.loss=cross_entropy", "train.loss cross_entropy does not suit a regression task"),
        (
            "regression",
            "train.class_weights=balanced",
            "class_weights and train.label_smoothing are for classification",
        ),
        ("classification", "train.loss=mse", "train.loss mse does not suit a classification task"),
        ("classification", "train.best_metric=val_r2", "a classification run offers"),
    ],
)
def test_settings_that_do_not_suit_the_task_are_refused(task, override, message):
    data = data_of(task, [0, 1, 2], [] if task == "regression" else ["a", "b", "c"])
    with pytest.raises(UsageError, match=message):
        objective(data, override)
    if task == "classification":
        with pytest.raises(UsageError, match="val_roc_auc needs two classes; this data has 3"):
            objective(data, "train.best_metric=val_roc_auc")


def test_two_class_run_with_balanced_weights_reports_roc_auc(tmp_path):
    from maasctl.train.trainer import Trainer

    rng = np.random.default_rng(0)
    path = tmp_path / "churn.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["plan", "months", "churned"])
        for i in range(200):
            churned = "yes" if i % 5 == 0 else "no"  # imbalanced: one in five
            w.writerow([["basic", "pro"][i % 2], f"{rng.normal(3 if churned == 'yes' else 12, 2):.1f}", churned])
    recipe = load_recipe(
        None,
        [
            "data.source=csv",
            f"data.path={path}",
            "data.label_column=churned",
            "model.name=mlp",
            "train.epochs=3",
            "train.class_weights=balanced",
            "train.best_metric=val_roc_auc",
            "train.device=cpu",
        ],
    )
    trainer = Trainer(recipe)
    try:
        result = trainer.fit(tmp_path / "run")
    finally:
        trainer.close()
    assert result.metrics["test_roc_auc"] > 0.9 and result.metrics["val_roc_auc"] > 0.9
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert header == (
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,val_macro_f1,val_roc_auc,lr,seconds,"
        "data_wait_seconds,compute_seconds"
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_metric"] == "val_roc_auc" and summary["test_confusion_matrix"]
