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
from maasctl.data.datasets import (
    Dataset,
    Split,
    Targets,
    check_splits,
    encode_targets,
    split_indices,
    standardize,
    stratified_split,
)
from maasctl.errors import UsageError, did_you_mean
from maasctl.preprocess import (
    TextEncoder,
    column_types,
    encode_rows,
    fit_tabular,
    image_spec,
    normalize_images,
    text_spec,
    tokenize,
    useless_columns,
)
from maasctl.recipe import schema

SPLITS = ("train", "validation", "test")


REGRESSION_SOURCES = ("csv", "npz", "text")  # sources whose labels may be numbers


def build_dataset(cfg: Any, seed: int, task: str = "auto") -> Dataset:
    """The recipe's data as splits. `task` (the recipe's): auto, classification or regression."""
    loaders: dict[type, Callable[..., Dataset]] = {
        schema.DigitsData: load_digits,
        schema.TorchvisionData: load_torchvision,
        schema.ImageFolderData: images.load_image_folder,  # streamed from disk (maasctl/data/images.py)
        schema.ImageCsvData: images.load_image_csv,
        schema.CsvData: load_csv,
        schema.NpzData: load_npz,
        schema.TextData: load_text,
    }
    if cfg.source in REGRESSION_SOURCES:
        return loaders[type(cfg)](cfg, seed, task)
    if task == "regression":
        raise UsageError(
            f"task: regression needs numeric labels, but data.source {cfg.source} has class labels; use a "
            f"{', '.join(REGRESSION_SOURCES)} source with a numeric label"
        )
    return loaders[type(cfg)](cfg, seed)


def describe_task(recipe: Any) -> str:
    """The task a recipe trains, and why (for `recipe show`): reads only the labels."""
    if recipe.task != "auto":
        return f"{recipe.task} (set in the recipe)"
    cfg = recipe.data
    if cfg.source not in REGRESSION_SOURCES:
        return f"classification (data.source {cfg.source} has class labels)"
    try:
        if cfg.source == "npz":
            with np.load(_require_file(cfg.path, "data.path"), allow_pickle=False) as npz:
                values = list(npz["y"].tolist())
        else:
            path = _require_file(cfg.path, "data.path")
            records = read_table(path)[1] if cfg.source == "csv" else _read_records(path, _text_format(cfg, path))
            values = [r.get(cfg.label_column) for r in records]
        targets = encode_targets(values, "auto", "data.label_column")
    except (UsageError, OSError, KeyError, ValueError) as exc:
        return f"auto (undecided: the labels could not be read: {exc})"
    return targets.notes[-1].removeprefix("task: ").split(";")[0]


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


def _three_way(labels: np.ndarray, cfg: Any, seed: int, task: str = "classification") -> list[np.ndarray]:
    parts = split_indices(labels, task, (cfg.split.train, cfg.split.validation, cfg.split.test), seed)
    check_splits(parts, SPLITS, "data.split")
    return parts


def read_table(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """A CSV or Parquet file's column names and rows (dicts of column -> cell; Parquet nulls are None)."""
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ModuleNotFoundError:
            raise UsageError(
                f"data.path: {path} is Parquet, which needs pyarrow: pip install pyarrow (or save the table as CSV)"
            ) from None
        table = pq.read_table(path)
        return list(table.column_names), table.to_pylist()
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def load_csv(cfg: schema.CsvData, seed: int, task: str = "auto") -> Dataset:
    path = _require_file(cfg.path, "data.path")
    columns, records = read_table(path)
    if cfg.label_column not in columns:
        raise _column_error("data.label_column", cfg.label_column, columns, path)
    for key in ("feature_columns", "categorical_columns", "drop_columns", "keep_columns"):
        for c in getattr(cfg, key) or []:
            if c not in columns:
                raise _column_error(f"data.{key}", c, columns, path)
    if not records:
        raise UsageError(f"data.path: {path} has a header but no rows")
    features = [c for c in (cfg.feature_columns or columns) if c != cfg.label_column and c not in cfg.drop_columns]
    label_of = [r.get(cfg.label_column) for r in records]
    targets = encode_targets(
        label_of, task, f"data.label_column {cfg.label_column!r} in {path}", lambda i: f"row {i + 2}"
    )
    records = [records[i] for i in targets.keep]
    notes = list(targets.notes)
    types = column_types(records, features, cfg.categorical_columns)
    dropped = {c: why for c, why in useless_columns(records, types).items() if c not in cfg.keep_columns}
    if dropped:
        notes.append(
            "warning: dropped columns that cannot help: "
            + "; ".join(f"{c}: {why}" for c, why in dropped.items())
            + " (list them in data.keep_columns to keep them)"
        )
    types = {c: t for c, t in types.items() if c not in dropped}
    if not types:
        raise UsageError(f"data: no feature columns left in {path} (every candidate was the label, dropped or useless)")
    parts = _three_way(targets.y, cfg, seed, targets.task)
    spec = fit_tabular(
        [records[i] for i in parts[0]], types, min_count=cfg.min_category_count, max_levels=cfg.max_categories
    )
    x, problems = encode_rows(records, spec)  # the same function predict and /predict call on raw rows
    if problems:  # column_types saw every row, so a numeric column holds only numbers and blanks
        i, why = next(iter(problems.items()))
        raise UsageError(f"data.path: {path} row {int(targets.keep[i]) + 2}: {why}")
    return _finish(x, targets, parts, spec, "features", cfg.label_column, notes)


def _finish(
    x: np.ndarray, targets: Any, parts: list[np.ndarray], spec: dict[str, Any], kind: str, column: str, notes: list[str]
) -> Dataset:
    """Splits from model-ready inputs; regression targets standardised with the training split's statistics."""
    y, target = targets.y, None
    if targets.task == "regression":
        y, target = standardize(y, parts[0], column)
    return _assemble([Split(x[idx], y[idx]) for idx in parts], targets, spec, kind, target, notes)


def _assemble(
    splits: list[Split], targets: Any, spec: dict[str, Any], kind: str, target: Any, notes: list[str]
) -> Dataset:
    """The dataset of three splits, with what the targets say about the task and the labels."""
    return Dataset(
        *splits,
        labels=targets.labels,
        preprocessing=spec,
        input_kind=kind,
        task=targets.task,
        target=target,
        notes=notes,
    )


def load_npz(cfg: schema.NpzData, seed: int, task: str = "auto") -> Dataset:
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
    n_main = len(y_raw)
    targets = _npz_targets(np.concatenate([y_raw, given_test[1]]) if given_test else y_raw, n_main, names, task, path)
    keep, main = targets.keep, targets.keep < n_main

    def prepare(a: np.ndarray) -> np.ndarray:
        if kind == "tokens":
            if a.dtype.kind not in "iu":
                raise UsageError(f"data.kind: tokens need integer ids, x is {a.dtype}")
            return a.astype(np.int64)
        a = a.astype(np.float32)
        return a[..., None] if kind == "sequence" and a.ndim == 2 else a

    x_main, y = prepare(x[keep[main]]), targets.y[main]
    spec = {"kind": "array", "dtype": "int64" if kind == "tokens" else "float32"}
    if not given_test:
        parts = _three_way(y, cfg, seed, targets.task)
        same = Targets(y, targets.labels, targets.task, keep, targets.notes)
        return _finish(x_main, same, parts, spec, kind, "y", targets.notes)
    parts = split_indices(y, targets.task, (cfg.split.train, cfg.split.validation), seed)
    check_splits(parts, SPLITS[:2], "data.split")
    y_test, target = targets.y[~main], None
    if targets.task == "regression":
        both, target = standardize(np.concatenate([y, y_test]), parts[0], "y")
        y, y_test = both[: len(y)], both[len(y) :]
    splits = [Split(x_main[i], y[i]) for i in parts] + [Split(prepare(given_test[0][keep[~main] - n_main]), y_test)]
    return _assemble(splits, targets, spec, kind, target, targets.notes)


def _npz_targets(all_y: np.ndarray, n_main: int, names: list[str] | None, task: str, path: Path) -> Targets:
    """y (then y_test) as targets: class indices when `labels` names them, else by `encode_targets`."""
    if names is not None and task != "regression":
        return Targets(all_y.astype(np.int64), names, "classification", np.arange(len(all_y)), [])
    row = lambda i: f"y[{i}]" if i < n_main else f"y_test[{i - n_main}]"  # noqa: E731
    return encode_targets(all_y.tolist(), task, f"data.path {path}: y", row)


# --- text ------------------------------------------------------------------------------------------------------


def _text_format(cfg: Any, path: Path) -> str:
    return cfg.format if cfg.format != "auto" else ("jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "csv")


def load_text(cfg: schema.TextData, seed: int, task: str = "auto") -> Dataset:
    path = _require_file(cfg.path, "data.path")
    fmt = _text_format(cfg, path)
    try:
        records = _read_records(path, fmt)
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"data.path: {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); re-save it as UTF-8"
        ) from None
    if not records:
        raise UsageError(f"data.path: {path} holds no records")
    if cfg.tokenizer != "words":  # subword tokenizers: maasctl/data/text.py
        from maasctl.data.text import load_subword_text

        return load_subword_text(cfg, seed, records, path, lambda y: _three_way(y, cfg, seed))
    columns = list(records[0])
    for key, col in (("data.text_column", cfg.text_column), ("data.label_column", cfg.label_column)):
        if col not in columns:
            raise _column_error(key, col, columns, path)
    line = (lambda i: f"row {i + 2}") if fmt == "csv" else (lambda i: f"record {i + 1}")
    targets = encode_targets(
        [r.get(cfg.label_column) for r in records], task, f"data.label_column {cfg.label_column!r} in {path}", line
    )
    texts = [str(records[i].get(cfg.text_column, "")) for i in targets.keep]
    parts = _three_way(targets.y, cfg, seed, targets.task)
    # The vocabulary comes from the training split only, so validation/test words stay unseen.
    counts: dict[str, int] = {}
    for i in parts[0]:
        for tok in tokenize(texts[i], cfg.lowercase):
            counts[tok] = counts.get(tok, 0) + 1
    ranked = sorted((t for t, n in counts.items() if n >= cfg.min_freq), key=lambda t: (-counts[t], t))
    spec = text_spec(ranked[: cfg.vocab_size - 2], cfg.max_len, cfg.lowercase)
    return _finish(TextEncoder(spec)(texts), targets, parts, spec, "tokens", cfg.label_column, list(targets.notes))


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
