"""Where each data split lives while training (train.data_placement), and the (x, y) batches it feeds the loop.

device: the split is copied to the device once per run and batches are indexed there: no per-step copies, fastest.
host:   the split stays in CPU memory; a DataLoader slices each batch (whole index batches, no per-sample collation),
        pins it on CUDA, and it is copied over with non_blocking=True: a dataset larger than the GPU still trains.
auto:   device on CPU (the data is in its memory already); on CUDA, device for the splits that fit together in half of
        the free GPU memory (the other half is for the model, optimizer state and activations), host for the others.

Either way a split gives the same batches in the same order, so the choice changes speed, not results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from maasctl.errors import UsageError

SPLITS = ("train", "validation", "test")  # in this order: train first to the device, it is read most
DEVICE_SHARE = 0.5  # auto on CUDA: the splits kept on the GPU take at most this share of its free memory


@dataclass(frozen=True)
class Placement:
    where: str  # "device" | "host"
    why: str


def choose_placement(
    requested: str, device_type: str, split_bytes: dict[str, int], free_bytes: int | None
) -> dict[str, Placement]:
    """Each split's placement: `requested` is train.data_placement, `split_bytes` the size of each split's arrays,
    `free_bytes` the free memory of the CUDA device (None elsewhere). A pure function, to be tested with numbers."""
    if requested == "host":
        return {s: Placement("host", "train.data_placement=host") for s in split_bytes}
    if device_type != "cuda":
        why = (
            "train.data_placement=device"
            if requested == "device"
            else "the device is the CPU: the data is in its memory"
        )
        return {s: Placement("device", why) for s in split_bytes}
    assert free_bytes is not None
    total = sum(split_bytes.values())
    if requested == "device":
        if total > free_bytes:
            raise UsageError(
                f"train.data_placement: device needs {_gib(total)} for the data splits, but the GPU has {_gib(free_bytes)} "
                "free; use train.data_placement=auto (or host) to keep what does not fit in pinned host memory"
            )
        return {
            s: Placement("device", f"train.data_placement=device; {_gib(total)} of {_gib(free_bytes)} free")
            for s in split_bytes
        }
    budget, used, placement = DEVICE_SHARE * free_bytes, 0, {}
    for split, size in split_bytes.items():
        need = f"{_gib(size)}" + (f" with {_gib(used)} already on the GPU" if used else "")
        if used + size <= budget:
            placement[split] = Placement("device", f"{need} fits in {_gib(budget)}, half of the free GPU memory")
            used += size
        else:
            placement[split] = Placement("host", f"{need} > {_gib(budget)}, half of the free GPU memory")
    return placement


def describe(placement: dict[str, Placement], device: torch.device) -> str:
    """One line for the log and summary.json, e.g. 'data: train in pinned host memory (1.20 GiB > 900.0 MiB, half of
    the free GPU memory); validation, test on cuda:0 (...)'."""
    groups: dict[tuple[str, str], list[str]] = {}
    for split, p in placement.items():
        groups.setdefault((p.where, p.why), []).append(split)
    where = {"device": f"on {device}", "host": "in pinned host memory" if device.type == "cuda" else "in host memory"}
    return "data: " + "; ".join(f"{', '.join(splits)} {where[w]} ({why})" for (w, why), splits in groups.items())


class SplitFeed:
    """One split's (x, y) batches, on the device, from wherever the split lives."""

    def __init__(
        self,
        split: Any,
        device: torch.device,
        where: str,
        *,
        workers: int = 0,
        prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    ) -> None:
        """`split`: numpy x and y; `prepare` lays out a device-resident x once (channels_last)."""
        x, y = torch.from_numpy(split.x), torch.from_numpy(split.y)
        self.device, self.where, self.n = device, where, len(y)
        if where == "device":
            self.x, self.y = prepare(x.to(device)), y.to(device)
            return
        self._keys: list[Any] = []  # this pass's index batches; the loader's sampler reads them in this process
        self._loader = DataLoader(
            _Rows(x, y),
            batch_size=None,  # the sampler yields whole index batches: the dataset slices, nothing is collated
            sampler=_Keys(self._keys),
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            generator=torch.Generator(),  # its worker seed is drawn from here, not from the global RNG (dropout, augment)
        )

    def batches(
        self, batch_size: int, order: torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """batch_size rows at a time (the last batch may be shorter): in `order` (indices on the CPU), or first to last."""
        if order is None:
            keys: list[Any] = [slice(i, i + batch_size) for i in range(0, self.n, batch_size)]
        else:
            keys = list((order.to(self.device) if self.where == "device" else order).split(batch_size))
        if self.where == "device":
            for key in keys:
                yield self.x[key], self.y[key]
            return
        self._keys[:] = keys
        for x, y in self._loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, torch.Tensor]:  # key: an index tensor or a slice
        return self.x[key], self.y[key]


class _Keys(torch.utils.data.Sampler):
    def __init__(self, keys: list[Any]) -> None:
        self.keys = keys

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self.keys))

    def __len__(self) -> int:
        return len(self.keys)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
