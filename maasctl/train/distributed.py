"""Multi-process training (DistributedDataParallel), nanoGPT-style: the same trainer runs under `python` or `torchrun`.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE in each process it starts. Without them (or with WORLD_SIZE=1) there
is one process and every helper here is a no-op, so the single-process path pays nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from maasctl.errors import MaasctlError, UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and logs; the others only train."""
        return self.rank == 0


def env_from_torchrun() -> DistEnv:
    if "RANK" not in os.environ:
        return DistEnv()
    return DistEnv(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def rank_device(env: DistEnv, device: torch.device) -> torch.device:
    """One GPU per process: rank r on a node uses cuda:LOCAL_RANK."""
    if not env.enabled or device.type != "cuda":
        return device
    if env.local_rank >= torch.cuda.device_count():
        raise UsageError(
            f"{env.world_size} processes per node but torch sees {torch.cuda.device_count()} CUDA device(s); "
            "use --nproc at most the GPU count, or --device cpu"
        )
    device = torch.device("cuda", env.local_rank)
    torch.cuda.set_device(device)
    return device


def init_process_group(env: DistEnv, device: torch.device) -> None:
    if not env.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(order: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """This rank's part of an epoch's permutation, as DistributedSampler takes it: pad by repeating the start so every
    rank gets as many samples (equal step counts, or DDP's gradient all-reduces would not pair up), then every
    world_size-th index. Rank batches of batch_size/world_size then form exactly the single-process batches."""
    if not env.enabled:
        return order
    total = math.ceil(len(order) / env.world_size) * env.world_size
    padded = order.repeat(math.ceil(total / len(order)))[:total]
    return padded[env.rank :: env.world_size]


def per_rank_batch(batch_size: int, env: DistEnv) -> int:
    """train.batch_size is the global batch: N processes take batch_size/N each (rounded up)."""
    return math.ceil(batch_size / env.world_size)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank (any picklable value)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and give its result to every rank; a usage error there is raised on every rank
    (instead of leaving the others waiting for a result that never comes)."""
    if not dist.is_initialized():
        return fn()
    outcome: tuple[str, Any, int] | None = None
    if dist.get_rank() == 0:
        try:
            outcome = ("ok", fn(), 0)
        except MaasctlError as exc:
            outcome = ("error", str(exc), exc.exit_code)
    kind, value, code = broadcast(outcome)
    if kind == "error":
        raise MaasctlError(value, exit_code=code)
    return value
