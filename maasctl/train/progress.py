"""Epoch progress: a live bar on a terminal, one plain line per epoch anywhere else (CI logs stay readable)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console


def _line(row: dict[str, Any], epochs: int) -> str:
    if "val_rmse" in row:  # regression: errors in the target's units
        scores = f"mae {row['train_mae']:.4g}  val_loss {row['val_loss']:.4f}  val_rmse {row['val_rmse']:.4g}"
    else:
        scores = f"acc {row['train_accuracy']:.2%}  val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.2%}"
    return f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  {scores}  lr {row['lr']:.2e}  {row['seconds']:.2f}s"


def _stats(row: dict[str, Any]) -> str:
    first = f"val_rmse {row['val_rmse']:.4g}" if "val_rmse" in row else f"val_acc {row['val_accuracy']:.2%}"
    return f"{first}  val_loss {row['val_loss']:.4f}  loss {row['train_loss']:.4f}"


@contextlib.contextmanager
def epoch_reporter(console: Console, epochs: int) -> Iterator[Any]:
    if not console.is_terminal:
        yield lambda row, total: console.print(_line(row, total), markup=False)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("epoch"),
        MofNCompleteColumn(),
        BarColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=epochs, stats="")

        def on_epoch(row: dict[str, Any], total: int) -> None:
            progress.update(task, completed=row["epoch"], total=total, stats=_stats(row))

        yield on_epoch
