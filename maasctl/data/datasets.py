"""Datasets as numpy splits, whatever their source. Every loader ends in the same `Dataset`: model-ready
inputs, class indices, labels, and the preprocessing contract serving must reproduce."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maasctl.errors import UsageError


@dataclass
class Split:
    x: np.ndarray  # model-ready inputs: float32, or int64 token ids
    y: np.ndarray  # int64 class indices; regression: float32 targets standardised with training statistics
    raw: np.ndarray | None = None  # inputs before preprocessing where they are images (uint8), to write sample files


@dataclass
class Dataset:
    train: Split
    validation: Split
    test: Split
    labels: list[str]
    preprocessing: dict[str, Any]
    input_kind: str = "image"  # image | features | sequence | tokens (see maasctl.models.registry)
    augment: Any = None  # AugmentConfig for image sources, applied per training batch
    extra: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"  # or regression
    target: dict[str, Any] | None = None  # regression: {column, mean, std} of the training targets
    notes: list[str] = field(default_factory=list)  # what loading decided or dropped, for the training log

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def num_outputs(self) -> int:
        """The model head's width: one value for regression, one score per class otherwise."""
        return 1 if self.task == "regression" else len(self.labels)

    @property
    def vocab_size(self) -> int | None:
        if "vocab_size" in self.preprocessing:  # a subword tokenizer's (maasctl/data/text.py)
            return int(self.preprocessing["vocab_size"])
        if self.input_kind != "tokens":
            return None
        vocab = self.preprocessing.get("vocab")
        return (
            len(vocab) + 2
            if vocab is not None
            else int(max(s.x.max() for s in (self.train, self.validation, self.test))) + 1
        )


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Indices for each fraction, with every class spread in proportion; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    bounds = np.cumsum(fractions)[:-1] / np.sum(fractions)
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cuts = np.rint(bounds * len(idx)).astype(int)
        for part, chunk in zip(parts, np.split(idx, cuts)):
            part.append(chunk)
    # Shuffle across classes too, so a split never comes out sorted by label.
    return [rng.permutation(np.concatenate(p)) for p in parts]


def split_indices(y: np.ndarray, task: str, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Stratified splits: by class, or for regression by decile of the target (each split spans its range)."""
    if task != "regression":
        return stratified_split(y, fractions, seed)
    cuts = np.unique(np.quantile(y, np.linspace(0, 1, 11)[1:-1]))
    return stratified_split(np.searchsorted(cuts, y), fractions, seed)


def check_splits(parts: list[np.ndarray], names: tuple[str, ...], where: str) -> None:
    for idx, name in zip(parts, names):
        if len(idx) == 0:
            raise UsageError(f"{where}: the {name} split is empty; the dataset is too small for these fractions")


def encode_labels(values: list[str] | np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Label values -> (int64 indices, sorted label names); numbers sort numerically."""
    strings = [str(v) for v in values]
    unique = sorted(set(strings), key=lambda s: (0, float(s), s) if _is_number(s) else (1, 0.0, s))
    index = {label: i for i, label in enumerate(unique)}
    return np.array([index[s] for s in strings], dtype=np.int64), unique


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# --- labels and regression targets ---------------------------------------------------------------------------

REGRESSION_MIN_DISTINCT = 20  # whole-number labels with more distinct values than this are regression targets


@dataclass
class Targets:
    """A label column made into model targets: `keep` are the rows that have a label (blanks are dropped)."""

    y: np.ndarray  # int64 class indices, or float64 values (regression; standardised later by `standardize`)
    labels: list[str]
    task: str
    keep: np.ndarray
    notes: list[str]


def infer_task(values: list[Any]) -> tuple[str, str]:
    """The rule for `task: auto`: regression when every label is a number and either some label is not a whole
    number or there are more than 20 distinct values; classification otherwise. Returns (task, why)."""
    from maasctl.preprocess import as_number

    numbers = [as_number(v) for v in values]
    if any(n is None for n in numbers):
        return "classification", "the labels are not all numbers"
    distinct = len(set(numbers))
    if any(n != round(n) for n in numbers):  # type: ignore[arg-type]
        return "regression", "the labels are numbers, not all whole"
    if distinct > REGRESSION_MIN_DISTINCT:
        return "regression", f"the labels are {distinct} distinct whole numbers (more than {REGRESSION_MIN_DISTINCT})"
    return "classification", f"the labels are {distinct} distinct whole numbers (at most {REGRESSION_MIN_DISTINCT})"


def encode_targets(values: list[Any], task: str, where: str, row: Any = lambda i: f"row {i}") -> Targets:
    """Labels -> targets for `task` (auto: `infer_task`). Blank labels are dropped and counted; a regression
    label that is not a number, or a single class, is an error naming `where` and the row (`row(i)`)."""
    from maasctl.preprocess import as_number, is_missing

    blank = [i for i, v in enumerate(values) if is_missing(v)]
    keep = np.array([i for i, v in enumerate(values) if not is_missing(v)], dtype=np.int64)
    notes = []
    if blank:
        notes.append(
            f"{where}: {len(blank)} of {len(values)} rows have a blank label ({', '.join(row(i) for i in blank[:3])}"
            f"{', ...' if len(blank) > 3 else ''}); they were dropped"
        )
    if len(keep) == 0:
        raise UsageError(f"{where}: every label is blank; there is nothing to learn from")
    kept = [values[i] for i in keep]
    if task == "auto":
        task, why = infer_task(kept)
        notes.append(f"task: {task}, inferred because {why}; set task: classification or regression to choose")
    if task == "regression":
        numbers = [as_number(v) for v in kept]
        bad = [i for i, n in enumerate(numbers) if n is None]
        if bad:
            first = int(keep[bad[0]])
            raise UsageError(
                f"{where}: the task is regression, so every label must be a number, but {row(first)} holds "
                f"{values[first]!r} ({len(bad)} such rows). Fix or blank those cells (blank labels are dropped), "
                "or set task: classification."
            )
        return Targets(np.array(numbers, dtype=np.float64), [], task, keep, notes)
    y, labels = encode_labels(kept)
    if len(labels) < 2:
        raise UsageError(
            f"{where}: every label is {labels[0]!r}: a classifier needs at least two classes. Check the label "
            "column, or set task: regression for a numeric target."
        )
    return Targets(y, labels, task, keep, notes)


def standardize(y: np.ndarray, train: np.ndarray, column: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Regression targets -> float32 standardised with the training split's mean and std; and those statistics."""
    mean, std = float(y[train].mean()), float(y[train].std())
    std = std if std > 0 else 1.0
    return ((y - mean) / std).astype(np.float32), {"column": column, "mean": mean, "std": std}
