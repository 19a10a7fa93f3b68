"""Streamed image splits: files decoded per sample in DataLoader worker processes, uint8 until the device.

A split of `maasctl.data.images.StreamedImages` holds file paths. Each worker opens its files with the serving side's
Pillow code (`preprocess.open_image`), augments training images with torchvision.transforms.v2, and hands back uint8
tensors; the batch is pinned (CUDA), copied with non_blocking=True, and normalised on the device with the manifest's
mean and std. Evaluation images go through `preprocess.load_image` itself, so the tensor a split is evaluated on is the
one `maasctl serve` and `predict` build from the same file (tests/train/test_streaming.py holds them equal).

Batches come in the order the trainer gives (its seeded permutation, sharded per rank under torchrun as
DistributedSampler does, a new one each epoch: set_epoch semantics), so each process reads only its shard.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from maasctl.preprocess import eval_resize, eval_transform, load_image, open_image

MAX_AUTO_WORKERS = 8  # what timm and Ultralytics default to at most
PREFETCH_BATCHES = 4  # per worker: a step that waits on a slow file does not stall the next ones


def auto_workers(local_processes: int = 1) -> int:
    """train.data_workers=auto for streamed images: this machine's cores shared among its training processes, ≤ 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(MAX_AUTO_WORKERS, cores // max(1, local_processes)))


def is_streamed(split: Any) -> bool:
    return hasattr(split.x, "files") and hasattr(split.x, "spec")


class ResizedCache:
    """data.cache: a split's images after the deterministic resize (`preprocess.eval_resize_size`), uint8, packed one
    after the other in one flat buffer, with a filled flag per image. Workers fill it as they decode (first epoch) and
    read it afterwards. Workers are separate processes, so the buffer is shared memory: ram = torch shared-memory
    tensors (inherited by forked workers, passed by handle to spawned ones); disk = memory-mapped files in the plan's
    folder, reopened in each process, kept for later runs. Within an epoch each image is read by one worker only, and
    its flag is set after its pixels, so no reader sees a half-written image."""

    def __init__(self, plan: Any) -> None:
        self.shapes, self.channels, self.kind = plan.shapes, plan.channels, plan.kind
        self.offsets = np.concatenate([[0], np.cumsum(self.shapes[:, 0] * self.shapes[:, 1] * self.channels)])
        n, total = len(self.shapes), int(self.offsets[-1])
        self.decodes = torch.zeros(n, dtype=torch.int32).share_memory_()  # files decoded by this run, per image
        self.path = Path(plan.path) if plan.path else None
        if self.path is None:
            self._pixels = torch.empty(total, dtype=torch.uint8).share_memory_()
            self._filled = torch.zeros(n, dtype=torch.uint8).share_memory_()
        elif not (self.path / "filled.u8").is_file():
            _create_disk_cache(self.path, total, n)
        self._views: tuple[np.ndarray, np.ndarray] | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:  # spawned workers: tensors by handle; memory maps reopened there
        return {**self.__dict__, "_views": None, "_pid": -1}

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._views is None or self._pid != os.getpid():
            if self.path is None:
                self._views = (self._pixels.numpy(), self._filled.numpy())
            else:
                self._views = (
                    np.memmap(self.path / "pixels.u8", np.uint8, mode="r+"),
                    np.memmap(self.path / "filled.u8", np.uint8, mode="r+"),
                )
            self._pid = os.getpid()
        return self._views

    def get(self, i: int) -> np.ndarray | None:
        pixels, filled = self._arrays()
        if not filled[i]:
            return None
        h, w = self.shapes[i]
        flat = pixels[self.offsets[i] : self.offsets[i + 1]]
        return flat.reshape((h, w) if self.channels == 1 else (h, w, self.channels))

    def put(self, i: int, image: np.ndarray) -> None:
        """Keep a freshly decoded image (and count the decode)."""
        self.decodes[i] += 1
        if image.shape[:2] != tuple(self.shapes[i]):  # the header's size was not the decoded one: left uncached
            return
        pixels, filled = self._arrays()
        pixels[self.offsets[i] : self.offsets[i + 1]] = image.reshape(-1)
        filled[i] = 1


def _create_disk_cache(path: Path, total: int, n: int) -> None:
    """The cache folder with empty (sparse) files, made aside and renamed into place: a run that stops half-way leaves
    a folder whose flags say what is filled, and two processes creating it at once end with one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    with open(tmp / "pixels.u8", "wb") as f:
        f.truncate(total)
    with open(tmp / "filled.u8", "wb") as f:
        f.truncate(n)
    try:
        os.rename(tmp, path)
    except OSError:  # made meanwhile by another process (another rank): use that one
        shutil.rmtree(tmp, ignore_errors=True)


class ImageFiles(torch.utils.data.Dataset):
    """(uint8 CHW tensor, class index) per file: `transform` (training) on the upright image in the model's colour
    mode, or without one exactly the serving path, `load_image`. With a `cache`, both start from the cached image
    after the deterministic resize; evaluation's crop of it is exactly `load_image`'s tensor."""

    def __init__(
        self,
        files: np.ndarray,
        labels: np.ndarray,
        spec: dict[str, Any],
        transform: Any = None,
        cache: ResizedCache | None = None,
    ) -> None:
        self.files, self.labels, self.spec, self.transform, self.cache = files, labels, spec, transform, cache

    def __len__(self) -> int:
        return len(self.files)

    def _resized(self, i: int) -> Any:
        """The image from the cache, or decoded, resized as evaluation resizes, and put in the cache (PIL image)."""
        from PIL import Image

        pixels = self.cache.get(i)
        if pixels is None:
            pixels = np.asarray(eval_resize(open_image(str(self.files[i]), self.spec), self.spec), dtype=np.uint8)
            self.cache.put(i, pixels)
        return Image.fromarray(pixels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.transform is not None:
            img = self._resized(i) if self.cache is not None else open_image(str(self.files[i]), self.spec)
            return self.transform(img).contiguous(), int(self.labels[i])
        if self.cache is not None:
            pixels = np.array(eval_transform(self._resized(i), self.spec), dtype=np.uint8)
        else:
            # Pillow's arrays are read-only; torch wants to own writable memory (a 150 KB copy at 224x224)
            pixels = np.require(load_image(str(self.files[i]), self.spec), requirements="W")
        x = torch.from_numpy(pixels)
        x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
        return x.contiguous(), int(self.labels[i])


def _collate(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's default_collate: in a worker it stacks the batch straight into shared memory. A plain torch.stack
    there, copied to shared memory when sent, grew each worker by ~70 KB an image (freed 10 MB buffers that glibc
    keeps) until it held as much as the dataset had passed through it."""
    from torch.utils.data import default_collate

    x, y = default_collate(samples)
    return x, y


class _EvalResize:
    """The evaluation resize + centre crop as a transform step (PIL in, PIL out)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def __call__(self, img: Any) -> Any:
        return eval_transform(img, self.spec)


def train_transform(aug: Any, spec: dict[str, Any]) -> Any:
    """The recipe's per-image augmentation (data.augment) as a torchvision.transforms.v2 pipeline, or None when it
    asks for none (the training images are then decoded exactly as evaluation's)."""
    if aug is None or not (aug.per_image or aug.random_crop_padding or aug.horizontal_flip):
        return None
    from torchvision.transforms import InterpolationMode, v2

    size = (spec["height"], spec["width"])
    interpolation = InterpolationMode(spec.get("interpolation", "bilinear"))
    ops: list[Any] = []
    if aug.random_resized_crop:
        ops.append(v2.RandomResizedCrop(size, scale=tuple(aug.random_resized_crop), interpolation=interpolation))
    else:
        ops.append(_EvalResize(spec))
    if aug.random_crop_padding:
        ops.append(v2.RandomCrop(size, padding=aug.random_crop_padding))
    if aug.horizontal_flip:
        ops.append(v2.RandomHorizontalFlip())
    if aug.color_jitter:
        j = aug.color_jitter
        ops.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j if spec["channels"] == 3 else 0))
    if aug.auto_augment == "trivial":
        ops.append(v2.TrivialAugmentWide(interpolation=interpolation))
    elif aug.auto_augment == "randaugment":
        ops.append(v2.RandAugment(interpolation=interpolation))
    ops.append(v2.PILToTensor())
    if aug.random_erasing:
        ops.append(v2.RandomErasing(p=aug.random_erasing, value=0))
    return v2.Compose(ops)


class Normalize:
    """uint8 (N,C,H,W) on the device -> float32 (x * scale - mean) / std, the same float32 operations, in the same
    order, as `preprocess.normalize_images`."""

    def __init__(self, spec: dict[str, Any], device: torch.device) -> None:
        self.scale = float(np.float32(spec["scale"]))
        self.mean = torch.tensor(spec["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(spec["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * self.scale - self.mean) / self.std


class StreamFeed:
    """A streamed split's (x, y) batches on the device; the same interface as placement.SplitFeed."""

    where = "stream"

    def __init__(
        self,
        split: Any,
        device: torch.device,
        *,
        workers: int,
        transform: Any = None,
        persistent: bool = True,
        seed: int = 0,
        max_batch: int | None = None,
        prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    ) -> None:
        self.device, self.n, self.prepare, self.max_batch = device, len(split.y), prepare, max_batch
        self.normalize = Normalize(split.x.spec, device)
        self._keys: list[list[int]] = []  # this pass's index batches; the batch sampler reads them in this process
        plan = getattr(split.x, "cache", None)
        self.cache = ResizedCache(plan) if plan is not None else None  # before the workers start: they share it
        self._loader = DataLoader(
            ImageFiles(split.x.files, split.y, split.x.spec, transform, self.cache),
            batch_sampler=_Batches(self._keys),
            collate_fn=_collate,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=persistent and workers > 0,
            prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
            # worker seeds (augmentation randomness) from here: reproducible, and not drawn from the global RNG
            generator=torch.Generator().manual_seed(seed),
        )

    def batches(
        self, batch_size: int, order: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """batch_size samples at a time in `order` (this rank's shard of the epoch's permutation), or first to last."""
        if order is None:
            step = min(batch_size, self.max_batch or batch_size)  # evaluation: batches small enough to spread
            self._keys[:] = [list(range(i, min(i + step, self.n))) for i in range(0, self.n, step)]
        else:
            self._keys[:] = [chunk.tolist() for chunk in order.split(batch_size)]
        for x, y in self._loader:
            x = x.to(self.device, non_blocking=True)
            yield self.prepare(self.normalize(x)), y.to(self.device, non_blocking=True)


class _Batches(torch.utils.data.Sampler):
    def __init__(self, keys: list[list[int]]) -> None:
        self.keys = keys

    def __iter__(self) -> Iterator[list[int]]:
        return iter(list(self.keys))

    def __len__(self) -> int:
        return len(self.keys)


def mix_batch(aug: Any, num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """data.augment.mixup / cutmix: (x, class indices) -> (mixed x, soft targets), or None when both are off."""
    if aug is None or not (aug.mixup or aug.cutmix):
        return None
    from torchvision.transforms import v2

    chosen = []
    if aug.mixup:
        chosen.append(v2.MixUp(alpha=aug.mixup, num_classes=num_classes))
    if aug.cutmix:
        chosen.append(v2.CutMix(alpha=aug.cutmix, num_classes=num_classes))
    return chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)
