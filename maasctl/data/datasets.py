"""Build the train/validation/test splits a recipe asks for."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from maasctl.preprocess import image_spec, normalize_images
from maasctl.recipe.schema import DataConfig


@dataclass
class Split:
    x: np.ndarray  # model-ready float32 inputs
    y: np.ndarray  # int64 class indices
    raw: np.ndarray  # the inputs before preprocessing (uint8 images), e.g. to write sample files


@dataclass
class Dataset:
    train: Split
    validation: Split
    test: Split
    labels: list[str]
    preprocessing: dict[str, Any]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def build_dataset(cfg: DataConfig, seed: int) -> Dataset:
    images, labels = _load_digits()
    split = cfg.split
    parts = stratified_split(labels, (split.train, split.validation, split.test), seed)
    train_idx = parts[0]
    # Normalisation statistics come from the training split only, so nothing leaks from validation/test.
    train_pixels = images[train_idx].astype(np.float64) / 255
    spec = image_spec(8, 8, 1, mean=[train_pixels.mean()], std=[train_pixels.std()])

    def make(idx: np.ndarray) -> Split:
        return Split(x=normalize_images(images[idx], spec), y=labels[idx].astype(np.int64), raw=images[idx])

    return Dataset(*(make(idx) for idx in parts), labels=[str(d) for d in range(10)], preprocessing=spec)


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Indices for each fraction, with every class spread in proportion; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    bounds = np.cumsum(fractions)[:-1]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cuts = np.rint(bounds * len(idx)).astype(int)
        for part, chunk in zip(parts, np.split(idx, cuts)):
            part.append(chunk)
    # Shuffle across classes too, so a split never comes out sorted by label.
    return [rng.permutation(np.concatenate(p)) for p in parts]


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    with resources.files("maasctl.data").joinpath("digits.npz").open("rb") as f:
        with np.load(f) as npz:
            return npz["images"], npz["labels"]
