"""One loader per recipe `data.source`. Each reads its files, splits (seeded, stratified), and fits any
preprocessing statistics on the training split only."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from maasctl.data import images
from maasctl.data.datasets import Dataset, Split, check_splits, encode_labels, stratified_split
from maasctl.errors import UsageError, did_you_mean
from maasctl.preprocess import (
    TextEncoder,
    image_spec,
    normalize_features,
    normalize_images,
    tabular_spec,
    text_spec,
    tokenize,
)
from maasctl.recipe import schema

SPLITS = ("train", "validation", "test")


def build_dataset(cfg: Any, seed: int) -> Dataset:
    loaders: dict[type, Callable[[Any, int], Dataset]] = {
        schema.DigitsData: load_digits,
        schema.TorchvisionData: load_torchvision,
        schema.ImageFolderData: images.load_image_folder,  # streamed from disk (maasctl/data/images.py)
        schema.ImageCsvData: images.load_image_csv,
        schema.CsvData: load_csv,
        schema.NpzData: load_npz,
        schema.TextData: load_text,
    }
    return loaders[type(cfg)](cfg, seed)


# --- images --------------------------------------------------------------------------------------------------


def _image_dataset(
    images: list[np.ndarray], labels: np.ndarray, names: list[str], cfg: Any, seed: int, test: tuple | None = None
) -> Dataset:
    """uint8 images (N,H,W) or (N,H,W,C) -> normalized NCHW splits; statistics from the training split only."""
    if test is None:
        parts = stratified_split(labels, (cfg.split.train, cfg.split.validation, cfg.split.test), seed)
        split_names = SPLITS
    else:
        parts = stratified_split(labels, (1 - cfg.validation, cfg.validation), seed)
        split_names = SPLITS[:2]
    check_splits(parts, split_names, "data")
    if cfg.augment.per_image:
        raise UsageError(
            f"data.augment: {', '.join(cfg.augment.per_image)} augment decoded images one by one, which only the "
            "streamed sources (image_folder, image_csv) do; in-memory images take random_crop_padding, "
            "horizontal_flip, mixup and cutmix"
        )
    # Per-channel statistics (one value for greyscale) over the training split only.
    train_pixels = images[parts[0]].astype(np.float64) / 255
    mean = np.atleast_1d(train_pixels.mean(axis=(0, 1, 2)))
    std = np.atleast_1d(train_pixels.std(axis=(0, 1, 2)))
    h, w = images.shape[1:3]
    channels = 1 if images.ndim == 3 else images.shape[3]
    spec = image_spec(h, w, channels, mean=mean, std=std)

    def make(imgs: np.ndarray, y: np.ndarray) -> Split:
        return Split(x=normalize_images(imgs, spec), y=y.astype(np.int64), raw=imgs)

    splits = [make(images[idx], labels[idx]) for idx in parts]
    if test is not None:
        splits.append(make(*test))
    return Dataset(*splits, labels=names, preprocessing=spec, input_kind="image", augment=cfg.augment)


def load_digits(cfg: schema.DigitsData, seed: int) -> Dataset:
    with resources.files("maasctl.data").joinpath("digits.npz").open("rb") as f, np.load(f) as npz:
        images, labels = npz["images"], npz["labels"].astype(np.int64)
    return _image_dataset(images, labels, [str(d) for d in range(10)], cfg, seed)


TORCHVISION_FILES = {
    "MNIST": "MNIST/raw/train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
    "FashionMNIST": "FashionMNIST/raw/ with the same four idx files as MNIST",
    "KMNIST": "KMNIST/raw/ with the same four idx files as MNIST",
    "CIFAR10": "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)",
    "CIFAR100": "cifar-100-python/ (train, test, meta)",
}


def load_torchvision(cfg: schema.TorchvisionData, seed: int) -> Dataset:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cfg.name)
    try:
        train = cls(cfg.root, train=True, download=cfg.download)
        test = cls(cfg.root, train=False, download=cfg.download)
    except RuntimeError as exc:
        where = Path(cfg.root).resolve()
        raise UsageError(
            f"data: torchvision {cfg.name} is not under {where} ({exc}). Either set data.download=true on a machine "
            f"with internet, or place the files there: {where}/{TORCHVISION_FILES[cfg.name]}."
        ) from None

    def arrays(ds: Any) -> tuple[np.ndarray, np.ndarray]:
        data = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
        return data.astype(np.uint8), np.asarray(ds.targets, dtype=np.int64)

    x, y = arrays(train)
    names = [str(c).split(" - ")[-1] for c in train.classes]
    return _image_dataset(x, y, names, cfg, seed, test=arrays(test))


# --- tabular and arrays ----------------------------------------------------------------------------------------


def _require_file(path: str, key: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{key}: no such file {p}")
    return p


def _column_error(key: str, wanted: str, columns: list[str], path: Path) -> UsageError:
    return UsageError(
        f"{key}: {wanted!r} is not a column of {path} (columns: {', '.join(columns)}){did_you_mean(wanted, columns)}"
    )


def _three_way(labels: np.ndarray, cfg: Any, seed: int) -> list[np.ndarray]:
    parts = stratified_split(labels, (cfg.split.train, cfg.split.validation, cfg.split.test), seed)
    check_splits(parts, SPLITS, "data.split")
    return parts


def load_csv(cfg: schema.CsvData, seed: int) -> Dataset:
    path = _require_file(cfg.path, "data.path")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if cfg.label_column not in columns:
        raise _column_error("data.label_column", cfg.label_column, columns, path)
    features = cfg.feature_columns or [c for c in columns if c != cfg.label_column]
    for c in features:
        if c not in columns:
            raise _column_error("data.feature_columns", c, columns, path)
    if not rows:
        raise UsageError(f"data.path: {path} has a header but no rows")
    x = np.empty((len(rows), len(features)), dtype=np.float64)
    bad: dict[str, str] = {}
    for r, row in enumerate(rows):
        for c, name in enumerate(features):
            try:
                x[r, c] = float(row[name])
            except (TypeError, ValueError):
                bad.setdefault(name, f"row {r + 2}: {row[name]!r}")
    if bad:
        detail = "; ".join(f"{k} ({v})" for k, v in bad.items())
        raise UsageError(
            f"data.feature_columns: non-numeric values in {path}: {detail}. Drop these columns with data.feature_columns, or encode them as numbers."
        )
    y, labels = encode_labels([row[cfg.label_column] for row in rows])
    parts = _three_way(y, cfg, seed)
    spec = tabular_spec(features, x[parts[0]].mean(0), x[parts[0]].std(0))
    splits = [Split(x=normalize_features(x[idx], spec), y=y[idx]) for idx in parts]
    return Dataset(*splits, labels=labels, preprocessing=spec, input_kind="features")


def load_npz(cfg: schema.NpzData, seed: int) -> Dataset:
    path = _require_file(cfg.path, "data.path")
    try:
        with np.load(path, allow_pickle=False) as npz:  # arrays only: never unpickle objects from a data file
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise UsageError(
                    f"data.path: {path} lacks array(s) {', '.join(missing)} (it has: {', '.join(npz.files)})"
                )
            x, y_raw = npz["x"], npz["y"]
            given_test = (npz["x_test"], npz["y_test"]) if "x_test" in npz.files and "y_test" in npz.files else None
            names = [str(n) for n in npz["labels"]] if "labels" in npz.files else None
    except (ValueError, OSError) as exc:
        raise UsageError(f"data.path: {path} is not a readable .npz of plain arrays ({exc})") from None
    if len(x) != len(y_raw):
        raise UsageError(f"data.path: {path}: x has {len(x)} rows but y has {len(y_raw)}")
    kind = cfg.kind
    if kind == "auto":
        kind = {4: "image", 3: "sequence", 2: "features"}.get(x.ndim)
        if kind is None:
            raise UsageError(f"data.kind: cannot tell what x of shape {list(x.shape)} is; set data.kind")
    all_y = np.concatenate([y_raw, given_test[1]]) if given_test else y_raw
    if names is None:
        _, names = encode_labels(all_y)
        index = {n: i for i, n in enumerate(names)}
        y_all = np.array([index[str(v)] for v in all_y], dtype=np.int64)
    else:
        y_all = all_y.astype(np.int64)
    y, y_test = y_all[: len(y_raw)], y_all[len(y_raw) :]

    def prepare(a: np.ndarray) -> np.ndarray:
        if kind == "tokens":
            if a.dtype.kind not in "iu":
                raise UsageError(f"data.kind: tokens need integer ids, x is {a.dtype}")
            return a.astype(np.int64)
        a = a.astype(np.float32)
        return a[..., None] if kind == "sequence" and a.ndim == 2 else a

    if given_test:
        parts = stratified_split(y, (cfg.split.train, cfg.split.validation), seed)
        check_splits(parts, SPLITS[:2], "data.split")
        splits = [Split(prepare(x[i]), y[i]) for i in parts] + [Split(prepare(given_test[0]), y_test)]
    else:
        splits = [Split(prepare(x[i]), y[i]) for i in _three_way(y, cfg, seed)]
    spec = {"kind": "array", "dtype": "int64" if kind == "tokens" else "float32"}
    return Dataset(*splits, labels=names, preprocessing=spec, input_kind=kind)


# --- text ------------------------------------------------------------------------------------------------------


def load_text(cfg: schema.TextData, seed: int) -> Dataset:
    path = _require_file(cfg.path, "data.path")
    fmt = cfg.format if cfg.format != "auto" else ("jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "csv")
    records = _read_records(path, fmt)
    if not records:
        raise UsageError(f"data.path: {path} holds no records")
    columns = list(records[0])
    for key, col in (("data.text_column", cfg.text_column), ("data.label_column", cfg.label_column)):
        if col not in columns:
            raise _column_error(key, col, columns, path)
    texts = [str(r.get(cfg.text_column, "")) for r in records]
    y, labels = encode_labels([r.get(cfg.label_column) for r in records])
    parts = _three_way(y, cfg, seed)
    # The vocabulary comes from the training split only, so validation/test words stay unseen.
    counts: dict[str, int] = {}
    for i in parts[0]:
        for tok in tokenize(texts[i], cfg.lowercase):
            counts[tok] = counts.get(tok, 0) + 1
    ranked = sorted((t for t, n in counts.items() if n >= cfg.min_freq), key=lambda t: (-counts[t], t))
    spec = text_spec(ranked[: cfg.vocab_size - 2], cfg.max_len, cfg.lowercase)
    encode = TextEncoder(spec)
    splits = [Split(encode([texts[i] for i in idx]), y[idx]) for idx in parts]
    return Dataset(*splits, labels=labels, preprocessing=spec, input_kind="tokens")


def _read_records(path: Path, fmt: str) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        if fmt == "csv":
            return list(csv.DictReader(f))
        records = []
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UsageError(f"data.path: {path} line {n} is not JSON ({exc.msg})") from None
        return records
