"""Checkpoints: written atomically, read with `weights_only=True` (no pickle code runs on load)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from maasctl.errors import UsageError
from maasctl.fileio import atomic_write


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}: the run has not finished an epoch yet")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one, do not guess
        raise UsageError(f"cannot read checkpoint {path}: {exc}") from None
