"""The prediction loop: sources in, batches through the target, predictions and problems out.

Sources are read in order and their samples gathered into batches of `batch_size`; while a batch runs, the
sources after it are read (`_ReadAhead`), so memory stays bounded by about two batches however many files
there are. A bad input becomes a `Problem` and the loop goes on (unless `fail_fast`); a model or server that
stops answering ends the loop (`Outcome.fatal`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maasctl.errors import EXIT_UNAVAILABLE, MaasctlError, UsageError
from maasctl.inputs.decode import by_length, in_input_order, load_source, stack_samples
from maasctl.inputs.outputs import Prediction, is_regression, label_batch, model_labels, value_batch
from maasctl.inputs.types import ModelInput, Problem, Sample, Source
from maasctl.predict.inputs import expand_inputs
from maasctl.predict.targets import Target

TEXT_WINDOW = 8  # batches of texts read before sorting them by length (memory: a few batches of token ids)


@dataclass
class Outcome:
    predictions: list[Prediction] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # every problem, `fatal` included
    fatal: Problem | None = None  # the model or server stopped answering
    stopped: bool = False  # ended before every input was tried (fatal, or --fail-fast)


# long: flush and problem share the outcome and the read-ahead; as closures the input-order rules stay in one place
def run_predictions(
    target: Target,
    items: Iterable[Source | Problem],
    *,
    batch_size: int = 64,
    top_k: int = 1,
    fail_fast: bool = False,
    on_problem: Callable[[Problem], None] = lambda p: None,
    on_source: Callable[[], None] = lambda: None,
) -> Outcome:
    """Predictions for `items`, in order, with a `Problem` for each input that failed.

    While the target runs a batch (on a thread: onnxruntime and sockets release the GIL), this thread reads
    the sources that come next, so decoding and inference overlap. What is read ahead is kept, not acted on:
    problems, progress and --fail-fast happen in input order exactly as they would without it.
    """
    model_input = ModelInput.from_manifest(target.manifest)
    labels = model_labels(target.manifest)
    outcome, pending = Outcome(), []
    items = list(items)
    ahead = _ReadAhead(items, model_input, limit=batch_size if _usable_cpus() > 1 else 0)
    # subword texts are sorted by length within a window of TEXT_WINDOW batches
    window = batch_size * (TEXT_WINDOW if model_input.kind == "subword" else 1)

    def problem(p: Problem) -> None:
        outcome.problems.append(p)
        on_problem(p)

    def flush_window(window: list[Sample], position: int) -> bool:
        """Subword texts: the window's batches by length (one long text pads only its own batch), predictions
        back in input order. Other inputs: one batch."""
        if model_input.kind != "subword":
            return flush(window, position)
        done: list[tuple[Sample, Prediction]] = []
        ok = True
        for b in by_length(window, batch_size):
            before = len(outcome.predictions)
            ok = flush(b, position)
            left = list(b)  # pair each prediction with its sample (a rejected batch has none)
            for p in outcome.predictions[before:]:
                s = next(s for s in left if s.name == p.input)
                left.remove(s)
                done.append((s, p))
            del outcome.predictions[before:]
            if not ok:
                break
        outcome.predictions += in_input_order(window, done)
        return ok

    def flush(batch: list[Sample], position: int) -> bool:
        """Predict one batch; False when the target failed for good. `position`: the last item read so far."""
        try:
            x = stack_samples(batch, model_input)
        except ValueError:  # dynamic dimensions of different sizes: one at a time
            return all(flush([s], position) for s in batch)
        try:
            logits = ahead.while_running(target.logits, x, position + 1)
        except UsageError as exc:  # the server refused this batch: its inputs failed, the rest may not
            for s in batch:
                problem(Problem(s.name, f"{s.name}: {exc}"))
            return True
        except MaasctlError as exc:
            outcome.fatal = Problem(None, str(exc), EXIT_UNAVAILABLE)
            problem(outcome.fatal)
            outcome.stopped = True
            return False
        if is_regression(target.manifest):
            outcome.predictions += value_batch(batch, logits)
        else:
            outcome.predictions += label_batch(batch, logits, labels, top_k)
        return True

    for position, item in enumerate(items):
        if isinstance(item, Problem):
            problem(item)
        else:
            try:
                for loaded in ahead.load(position):
                    if isinstance(loaded, Problem):  # one bad row of a CSV file: the other rows still run
                        problem(loaded)
                    else:
                        pending.append(loaded)
            except UsageError as exc:
                problem(Problem(item.name, str(exc)))
            while len(pending) >= window:
                if not flush_window(pending[:window], position):
                    return outcome
                pending = pending[window:]
        on_source()
        if fail_fast and outcome.problems:
            outcome.stopped = position < len(items) - 1
            break
    if pending:
        flush_window(pending, len(items))  # with --fail-fast: the inputs before the bad one are still predicted
    return outcome


class _ReadAhead:
    """`load_source` for items[position], possibly done earlier, while the target ran a batch.

    Reading a source has no effect beyond its result (samples, or the UsageError it raises), so reading it
    early and handing the result over when its turn comes changes nothing but the timing; what was read for
    inputs after a fatal error or a --fail-fast stop is dropped. Reading ahead stops once `limit` samples are
    held (one batch: memory stays bounded as before, give or take a batch); `limit` 0 turns it off. On a single
    CPU it is off: nothing overlaps there, and the thread costs about 0.3 ms a batch.
    """

    def __init__(self, items: list[Source | Problem], model_input: ModelInput, limit: int) -> None:
        self.items, self.model_input, self.limit = items, model_input, limit
        self.done: dict[int, list[Sample | Problem] | Exception] = {}
        self.held = 0  # samples in `done`
        self.next = 0  # the first item not read ahead

    def load(self, position: int) -> list[Sample | Problem]:
        result = self.done.pop(position, None)
        if result is None:
            return load_source(self.items[position], self.model_input)  # type: ignore[arg-type]
        if isinstance(result, Exception):
            raise result
        self.held -= len(result)
        return result

    def while_running(self, fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, start: int) -> np.ndarray:
        """fn(x) (its result, or what it raised), reading items from `start` on meanwhile."""
        self.next = max(self.next, start)
        if self.next >= len(self.items) or self.held >= self.limit:
            return fn(x)  # nothing to read meanwhile: no thread
        import threading

        box: list[Any] = []

        def run() -> None:
            try:
                box.append((True, fn(x)))
            except BaseException as exc:  # handed to the caller, as if fn had run here
                box.append((False, exc))

        worker = threading.Thread(target=run, name="maasctl-predict-batch", daemon=True)
        worker.start()
        while worker.is_alive() and self.next < len(self.items) and self.held < self.limit:
            item = self.items[self.next]
            if not isinstance(item, Problem):
                try:
                    loaded = load_source(item, self.model_input)
                    self.held += len(loaded)
                    self.done[self.next] = loaded
                except Exception as exc:  # raised when its turn comes, as if it were read then
                    self.done[self.next] = exc
            self.next += 1
        worker.join()
        ok, value = box[0]
        if not ok:
            raise value
        return value


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on macOS or Windows
        return os.cpu_count() or 1


def predict(target: Target, inputs: list[str], batch_size: int = 64, top_k: int = 1) -> list[Prediction]:
    """Predictions for paths (files, folders, globs), in order; raises on the first input that fails."""
    outcome = run_predictions(target, expand_inputs(inputs), batch_size=batch_size, top_k=top_k, fail_fast=True)
    if outcome.problems:
        first = outcome.problems[0]
        raise MaasctlError(first.message, exit_code=first.exit_code)
    if not outcome.predictions:
        raise UsageError("no inputs to predict")
    return outcome.predictions
