"""Training progress: a live bar on a terminal (moving within each epoch: steps, samples/s, loss, time left), one plain
line per epoch anywhere else (CI logs stay readable). `DataClock` measures how long the steps waited for data."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rich.console import Console

STEP_REFRESH_SECONDS = 0.5  # the step callback runs at most this often: reading the loss syncs with the GPU


class DataClock:
    """Wraps an epoch's batch iterator: `wait` is the time spent blocked on the next batch, `compute` the rest."""

    def __init__(self, steps: int, on_step: Callable[[int, int, int, float], None] | None = None) -> None:
        self.steps, self.on_step = steps, on_step
        self.wait, self.step, self.samples = 0.0, 0, 0
        self.started = time.perf_counter()
        self._ended: float | None = None
        self._shown = self.started

    def wrap(self, batches: Iterable[Any]) -> Iterator[Any]:
        it = iter(batches)
        while True:
            asked = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                break
            finally:
                self.wait += time.perf_counter() - asked
            yield item
        self._ended = time.perf_counter()

    def step_done(self, samples: int, loss: Any) -> None:
        self.step += 1
        self.samples += samples
        now = time.perf_counter()
        if self.on_step is not None and (now - self._shown >= STEP_REFRESH_SECONDS or self.step == self.steps):
            self._shown = now
            self.on_step(self.step, self.steps, self.samples, float(loss))

    @property
    def total(self) -> float:
        return (self._ended or time.perf_counter()) - self.started

    @property
    def compute(self) -> float:
        return self.total - self.wait


def _line(row: dict[str, Any], epochs: int) -> str:
    if "val_rmse" in row:  # regression: errors in the target's units
        scores = f"mae {row['train_mae']:.4g}  val_loss {row['val_loss']:.4f}  val_rmse {row['val_rmse']:.4g}"
    else:
        scores = f"acc {row['train_accuracy']:.2%}  val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.2%}"
    wait = row.get("data_wait_seconds")
    data = f"  data wait {wait:.2f}s" if wait is not None else ""
    return (
        f"epoch {row['epoch']}/{epochs}  loss {row['train_loss']:.4f}  {scores}  lr {row['lr']:.2e}  {row['seconds']:.2f}s"
        f"{data}"
    )


def _stats(row: dict[str, Any]) -> str:
    first = f"val_rmse {row['val_rmse']:.4g}" if "val_rmse" in row else f"val_acc {row['val_accuracy']:.2%}"
    wait = row.get("data_wait_seconds", 0.0)
    return (
        f"{first}  val_loss {row['val_loss']:.4f}  loss {row['train_loss']:.4f}  "
        f"data wait {wait:.1f}s of {row['seconds']:.1f}s"
    )


class _Reporter:
    """Called once per epoch; `.step` (or None off a terminal) within it."""

    def __init__(self, on_epoch: Callable[[dict[str, Any], int], None], step: Any = None) -> None:
        self._on_epoch, self.step = on_epoch, step

    def __call__(self, row: dict[str, Any], total: int) -> None:
        self._on_epoch(row, total)


@contextlib.contextmanager
def epoch_reporter(console: Console, epochs: int) -> Iterator[Any]:
    if not console.is_terminal:
        yield _Reporter(lambda row, total: console.print(_line(row, total), markup=False))
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        MofNCompleteColumn(),
        BarColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("epoch", total=epochs, stats="")
        steps = progress.add_task("step", total=None, stats="")
        epoch_started = [time.perf_counter()]

        def on_epoch(row: dict[str, Any], total: int) -> None:
            progress.update(task, completed=row["epoch"], total=total, stats=_stats(row))
            epoch_started[0] = time.perf_counter()

        def on_step(step: int, total: int, samples: int, loss: float) -> None:
            if step == 1 or samples == 0:
                epoch_started[0] = min(epoch_started[0], time.perf_counter())
            rate = samples / max(time.perf_counter() - epoch_started[0], 1e-9)
            progress.update(steps, completed=step, total=total, stats=f"{rate:,.0f} samples/s  loss {loss:.4f}")

        yield _Reporter(on_epoch, on_step)
