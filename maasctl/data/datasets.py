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
    y: np.ndarray  # int64 class indices
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

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.labels)

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
