"""Pictures of a run: training curves, and the test confusion matrix (classification) or predicted against actual
values and residuals (regression), as PNG files in the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maasctl.fileio import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, works on a headless GPU box
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    score = "mae" if "train_mae" in history[0] else "accuracy"  # regression: mean absolute error in target units
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss", yscale="log")
    ax_acc.plot(epochs, [r[f"train_{score}"] for r in history], label="train")
    ax_acc.plot(epochs, [r[f"val_{score}"] for r in history], label="validation")
    ax_acc.set(xlabel="epoch", ylabel=score, title=score)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def plot_confusion(
    matrix: list[list[int]], labels: list[str], path: Path, title: str = "test confusion matrix"
) -> None:
    plt = _pyplot()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * n, 0.8 + 0.5 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set(
        xticks=range(n),
        yticks=range(n),
        xticklabels=labels,
        yticklabels=labels,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    peak = max(max(row) for row in matrix) or 1
    if n <= 30:
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                if v:
                    ax.text(
                        j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > peak / 2 else "black"
                    )
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def plot_regression(actual: Any, predicted: Any, folder: Path, column: str) -> None:
    """predicted_vs_actual.png (with the y = x line) and residuals.png (residual against predicted value)."""
    import numpy as np

    plt = _pyplot()
    actual, predicted = np.asarray(actual), np.asarray(predicted)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(actual, predicted, s=8, alpha=0.6)
    low, high = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="grey", linewidth=1)
    ax.set(xlabel=f"actual {column}", ylabel=f"predicted {column}", title="test: predicted against actual")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(folder / "predicted_vs_actual.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(predicted, predicted - actual, s=8, alpha=0.6)
    ax.axhline(0, color="grey", linewidth=1)
    ax.set(xlabel=f"predicted {column}", ylabel="predicted - actual", title="test: residuals")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(folder / "residuals.png", lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
