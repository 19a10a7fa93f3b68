"""Speed settings (train.amp, train.channels_last, train.compile) resolved against the device and the data.

Rule: `auto` picks what is fast and safe where the run is (CUDA: bf16 or fp16, channels_last; CPU: neither);
an explicit value is honoured, or refused with a UsageError when this machine cannot honour it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from maasctl.errors import UsageError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Accel:
    device: torch.device
    amp: str  # "off" | "bf16" | "fp16": what is actually used
    channels_last: bool
    compile: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp])

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def grad_scaler(self) -> torch.amp.GradScaler:
        # Only fp16 needs loss scaling (its exponent range is narrow); disabled, the scaler is a pass-through.
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

    def describe(self) -> dict[str, Any]:
        return {"amp": self.amp, "channels_last": self.channels_last, "compile": self.compile}


def resolve_accel(cfg: Any, device: torch.device, input_ndim: int) -> Accel:
    """`cfg` is the recipe's TrainConfig; `input_ndim` counts the batch axis (4 for N,C,H,W images)."""
    cuda = device.type == "cuda"
    amp = cfg.amp
    if amp == "auto":
        amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "off"
    elif amp == "fp16" and not cuda:
        raise UsageError(
            "train.amp: fp16 needs CUDA (on CPU it is emulated and slower than fp32); "
            "use train.amp=auto (off on CPU), bf16, or off"
        )
    elif amp == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UsageError("train.amp: bf16 is not supported by this GPU; use train.amp=fp16 or auto")

    if cfg.channels_last == "on" and input_ndim != 4:
        raise UsageError(
            f"train.channels_last: on needs image inputs (N,C,H,W); this dataset's inputs have {input_ndim} axes. "
            "Use auto or off"
        )
    channels_last = input_ndim == 4 and (cfg.channels_last == "on" or (cfg.channels_last == "auto" and cuda))
    return Accel(device=device, amp=amp, channels_last=channels_last, compile=bool(cfg.compile))
