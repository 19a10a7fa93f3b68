"""Checkpoints: written atomically, read with `weights_only=True` (no pickle code runs on load)."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from maasctl.errors import UsageError
from maasctl.fileio import atomic_write_bytes


def save_checkpoint(paths: Path | Sequence[Path], state: dict[str, Any]) -> None:
    """Serialize `state` once and write it to each path in turn (best.pt and last.pt often hold the same epoch)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    for path in [paths] if isinstance(paths, Path) else paths:
        atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}: the run has not finished an epoch yet")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which one, do not guess
        raise UsageError(f"cannot read checkpoint {path}: {exc}") from None


def load_best_model(run_dir: Path, note: str = "") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The run's best checkpoint rebuilt in its architecture (from the metadata saved with it, pruned shapes
    included), and that metadata. Weights that do not fit: UsageError naming the file, `note` appended."""
    from maasctl.models import build_model_from_meta

    path = run_dir / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(path)
    model = build_model_from_meta(ckpt["meta"], weights_follow=True)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UsageError(f"{path}: the weights do not fit its model: {str(exc).splitlines()[0]}{note}") from None
    return model, ckpt["meta"]


def snapshot(obj: Any) -> Any:
    """A copy of a state (tensors on the CPU, containers new) that training may go on changing the original of."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class BackgroundWriter:
    """Runs file-writing jobs on a thread while the next epoch trains, one at a time and in order: serializing and
    fsyncing a checkpoint each epoch is otherwise time the accelerator sits idle. Files on disk are at most one
    epoch behind; `wait()` catches up and raises any error the last job hit. The thread is not a daemon, so a job
    under way when the run is interrupted still completes."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(job,), name="maasctl-checkpoint-writer")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # handed to the training thread at its next submit() or wait()
            self._error = exc
