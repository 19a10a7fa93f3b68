"""Image sources read from files (`image_folder`, `image_csv`): listed, checked and split up front, decoded per sample.

Nothing here decodes a whole dataset: a split holds file paths and labels. Training decodes them in DataLoader worker
processes (maasctl/train/streaming.py); export, evaluate and compress read small slices through `StreamedImages`,
which gives the same float32 tensors serving builds (`preprocess.load_image` + `normalize_images`). No torch here:
`maasctl evaluate` builds datasets on a serving box.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maasctl.data.datasets import Dataset, Split, check_splits, encode_labels, stratified_split
from maasctl.errors import UsageError, did_you_mean
from maasctl.preprocess import eval_resize_size, load_image, normalize_images, streamed_image_spec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_SIZE = (32, 32)
SPLITS = ("train", "validation", "test")


@dataclass
class ImageIndex:
    """Image files and their class indices, before any pixel is decoded."""

    files: list[str]
    labels: np.ndarray
    classes: list[str]
    ignored: int = 0  # files beside the images that are not images (by suffix): not read, counted
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): unreadable, left out
    sizes: np.ndarray | None = None  # (N, 2) width, height of each image upright (EXIF orientation), from its header


class StreamedImages:
    """A split's inputs as a read-only array of float32 (N, C, H, W), decoded when sliced: `x[i:j]`, `x[[i, j]]`.

    Export (parity samples), compress (calibration) and evaluate read a few hundred images through it, with the exact
    preprocessing serving applies. Training reads `files` and `spec` itself, in worker processes."""

    def __init__(self, files: np.ndarray, spec: dict[str, Any]) -> None:
        self.files = files  # a numpy array of str, not a list: forked workers then share it without copying pages
        self.spec = spec
        self.cache: CachePlan | None = None  # data.cache: set by `plan_cache`, opened by the training feed
        self.dtype = np.dtype(np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files), self.spec["channels"], self.spec["height"], self.spec["width"])

    @property
    def ndim(self) -> int:
        return 4

    @property
    def nbytes(self) -> int:  # what the split would take decoded
        return int(np.prod(self.shape)) * 4

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: Any) -> np.ndarray:
        chosen = self.files[key]
        if isinstance(chosen, str):
            return normalize_images(load_image(chosen, self.spec)[None], self.spec)[0]
        if len(chosen) == 0:
            return np.zeros((0, *self.shape[1:]), np.float32)
        return normalize_images(np.stack([load_image(f, self.spec) for f in chosen]), self.spec)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def list_image_folder(root: Path) -> ImageIndex:
    if not root.is_dir():
        raise UsageError(f"data.root: {root} is not a folder (expected {root}/<class>/<image files>)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, labels, ignored, empty = [], [], 0, []
    for i, name in enumerate(classes):
        found = 0
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if fname.startswith("."):
                    continue
                if Path(fname).suffix.lower() in IMAGE_SUFFIXES:
                    files.append(os.path.join(dirpath, fname))
                    labels.append(i)
                    found += 1
                else:
                    ignored += 1
        if not found:
            empty.append(name)
    if not files:
        raise UsageError(
            f"data.root: no images found under {root}. Expected one sub-folder per class holding image files "
            f"({root}/<class>/<image>, suffixes {', '.join(sorted(IMAGE_SUFFIXES))})."
        )
    if empty:
        raise UsageError(
            f"data.root: class folders with no images under {root}: {', '.join(empty)}. Each sub-folder of {root} is "
            "a class and needs image files; remove the empty folders or add images to them."
        )
    return ImageIndex(files, np.array(labels, dtype=np.int64), classes, ignored)


def read_image_csv(path: Path, path_column: str, label_column: str) -> ImageIndex:
    if not path.is_file():
        raise UsageError(f"data.path: no such file {path} (a CSV index with columns {path_column},{label_column})")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    for key, col in (("data.path_column", path_column), ("data.label_column", label_column)):
        if col not in columns:
            raise UsageError(
                f"{key}: {col!r} is not a column of {path} (its header: {', '.join(columns) or 'empty'})"
                f"{did_you_mean(col, columns)}. The index needs one row per image: a path relative to the CSV's "
                f"folder and a label; set data.path_column / data.label_column to its column names."
            )
    if not rows:
        raise UsageError(f"data.path: {path} has a header but no rows")
    base = path.parent
    files, missing, ignored = [], [], 0
    keep = []
    for n, row in enumerate(rows, start=2):
        rel = (row.get(path_column) or "").strip()
        file = base / rel if rel else None
        if file is None or not file.is_file():
            missing.append(f"line {n}: {rel!r}")
        elif file.suffix.lower() not in IMAGE_SUFFIXES:
            ignored += 1
        else:
            files.append(str(file))
            keep.append(row[label_column])
    if missing:
        shown = "; ".join(missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UsageError(
            f"data.path: {len(missing)} row(s) of {path} name files that do not exist (paths are relative to "
            f"{base}): {shown}. Fix the paths or drop those rows."
        )
    if not files:
        raise UsageError(f"data.path: no row of {path} names an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
    labels, classes = encode_labels(keep)
    return ImageIndex(files, labels, classes, ignored)


def check_readable(index: ImageIndex, max_unreadable: float, where: str) -> ImageIndex:
    """Open every file's header (no decoding; threads, since it is I/O) and leave out the unreadable ones, or refuse
    when they are more than `max_unreadable` of the files."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        headers = list(pool.map(_header, index.files))
    problems = [p for p, _ in headers]
    index.sizes = np.array([size for _, size in headers], dtype=np.int64).reshape(-1, 2)
    bad = [i for i, p in enumerate(problems) if p]
    if not bad:
        return index
    share = len(bad) / len(index.files)
    listed = "; ".join(f"{index.files[i]} ({problems[i]})" for i in bad[:5]) + ("; ..." if len(bad) > 5 else "")
    if share > max_unreadable:
        raise UsageError(
            f"{where}: {len(bad)} of {len(index.files)} image files ({share:.1%}) cannot be read, more than "
            f"data.max_unreadable={max_unreadable:g}: {listed}. Fix or remove them, or raise data.max_unreadable to "
            "train without them (they are then listed in the run's skipped.csv)."
        )
    good = np.setdiff1d(np.arange(len(index.files)), bad)
    return ImageIndex(
        [index.files[i] for i in good],
        index.labels[good],
        index.classes,
        index.ignored,
        [(index.files[i], str(problems[i])) for i in bad],
        index.sizes[good],
    )


def _header(file: str) -> tuple[str | None, tuple[int, int]]:
    """(why the file cannot be read or None, its (width, height) upright), from the header alone."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            if img.width < 1 or img.height < 1:
                return "empty image", (0, 0)
            # EXIF orientations 5-8 turn the image a quarter (open_image applies them): width and height swap
            turned = img.getexif().get(0x0112) in (5, 6, 7, 8)
            return None, (img.height, img.width) if turned else (img.width, img.height)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        why = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}".rstrip(": ")
        return why, (0, 0)


def streamed_dataset(index: ImageIndex, cfg: Any, seed: int) -> Dataset:
    """Seeded, stratified splits of `index` as file lists; the preprocessing serving will reproduce."""
    if len(index.classes) < 2:
        raise UsageError(
            f"data: only one class ({index.classes[0]!r}) in {getattr(cfg, 'root', None) or cfg.path}; a classifier "
            "needs at least two (one sub-folder per class, or two label values in the index)."
        )
    parts = stratified_split(index.labels, (cfg.split.train, cfg.split.validation, cfg.split.test), seed)
    check_splits(parts, SPLITS, "data.split")
    h, w = cfg.image_size or DEFAULT_SIZE
    grey = cfg.channels == 1
    mean = cfg.mean or ([float(np.mean(IMAGENET_MEAN))] if grey else list(IMAGENET_MEAN))
    std = cfg.std or ([float(np.mean(IMAGENET_STD))] if grey else list(IMAGENET_STD))
    if len(mean) != cfg.channels or len(std) != cfg.channels:
        raise UsageError(f"data.mean/data.std: need {cfg.channels} value(s) each (data.channels), got {mean} / {std}")
    spec = streamed_image_spec(h, w, cfg.channels, mean, std, cfg.crop_fraction or 1.0, cfg.interpolation or "bilinear")
    files = np.array(index.files)
    splits = [Split(x=StreamedImages(files[idx], spec), y=index.labels[idx]) for idx in parts]  # type: ignore[arg-type]
    if getattr(cfg, "cache", "none") != "none":
        plan_cache([s.x for s in splits], [index.sizes[idx] for idx in parts], cfg.cache, cfg.cache_dir)
    extra = {"skipped": index.skipped, "ignored_files": index.ignored, "streamed": True}
    return Dataset(
        *splits, labels=index.classes, preprocessing=spec, input_kind="image", augment=cfg.augment, extra=extra
    )


def load_image_folder(cfg: Any, seed: int) -> Dataset:
    index = check_readable(list_image_folder(Path(cfg.root)), cfg.max_unreadable, "data.root")
    return streamed_dataset(index, cfg, seed)


def load_image_csv(cfg: Any, seed: int) -> Dataset:
    index = read_image_csv(Path(cfg.path), cfg.path_column, cfg.label_column)
    return streamed_dataset(check_readable(index, cfg.max_unreadable, "data.path"), cfg, seed)


# --- data.cache: the images after the deterministic resize, uint8 --------------------------------------------------

CACHE_VERSION = 1  # part of the disk cache's key: a change to what is stored makes a new cache
RAM_SHARE = 0.8  # data.cache ram: at most this share of the available memory (the rest: model, batches, workers)


@dataclass
class CachePlan:
    """Where a split's resized images are kept and each one's (height, width); opened by maasctl/train/streaming.py."""

    kind: str  # "ram" or "disk"
    shapes: np.ndarray  # (N, 2) height, width after the resize
    channels: int
    path: str | None = None  # disk: this split's cache folder (its name is the key)

    @property
    def nbytes(self) -> int:
        return int((self.shapes[:, 0] * self.shapes[:, 1]).sum()) * self.channels


def plan_cache(splits: list[StreamedImages], sizes: list[np.ndarray], kind: str, cache_dir: str | None) -> None:
    """Give each split a CachePlan, or refuse (before anything is written) when the cache would not fit: the resized
    size of every image is known from its header (`check_readable`), so the estimate is exact."""
    spec = splits[0].spec
    plans = []
    for wh in sizes:
        shapes = np.array([eval_resize_size((int(w), int(h)), spec)[::-1] for w, h in wh], np.int64).reshape(-1, 2)
        plans.append(CachePlan(kind, shapes, spec["channels"]))
    need = sum(p.nbytes for p in plans)
    if kind == "ram":
        # each training process on this machine (torchrun) holds a cache of its own
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        need, have = need * processes, _available_memory()
        if need > RAM_SHARE * have:
            held = f" ({processes} processes, one cache each)" if processes > 1 else ""
            raise UsageError(
                f"data.cache ram: the resized images need {_gib(need)}{held} and this machine has {_gib(have)} of "
                f"memory available (the cache may take {RAM_SHARE:.0%} of it). Use data.cache: disk, a smaller "
                "image_size, or data.cache: none (decode every epoch)."
            )
    else:
        root = Path(cache_dir) if cache_dir else _default_cache_dir()
        for split, plan in zip(splits, plans, strict=True):
            plan.path = str(root / _cache_key(split.files, spec))
        missing = sum(p.nbytes for p in plans if not Path(p.path, "pixels.u8").is_file())  # type: ignore[arg-type]
        free = shutil.disk_usage(_existing_parent(root)).free
        if missing > free:
            raise UsageError(
                f"data.cache disk: the resized images need {_gib(missing)} in {root} and its disk has {_gib(free)} "
                "free. Point data.cache_dir at a larger disk, use a smaller image_size, or data.cache: none."
            )
    for split, plan in zip(splits, plans, strict=True):
        split.cache = plan


def _cache_key(files: np.ndarray, spec: dict[str, Any]) -> str:
    """The files (path, size, modification time) and what is done to them (resize, colour mode), hashed."""
    what = {k: spec.get(k) for k in ("height", "width", "crop_fraction", "interpolation", "mode", "channels")}
    digest = hashlib.sha256(json.dumps({**what, "version": CACHE_VERSION}, sort_keys=True).encode())
    for f in files:
        st = os.stat(f)
        digest.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _available_memory() -> int:
    """MemAvailable of /proc/meminfo (Linux); elsewhere the free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "maasctl" / "images"


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
