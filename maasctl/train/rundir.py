"""Run folders under artifacts/runs/: created with a fresh name, never reused or overwritten."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maasctl.errors import UsageError
from maasctl.recipe import Recipe

# Settings that change how training runs, not what the checkpoint means: free to change on --resume.
ENGINE_KEYS = ("device", "amp", "channels_last", "compile", "data_placement", "data_workers", "tensorboard", "mlflow")


def create_run_dir(runs_root: Path, name: str) -> Path:
    """Make `runs_root/name`, or `name-2`, `name-3`... when taken. mkdir is atomic, so two runs never share one."""
    runs_root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = runs_root / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        (candidate / "checkpoints").mkdir()
        return candidate
    raise UsageError(f"too many runs named {name!r} in {runs_root}")


def find_run_dir(run: str, runs_root: Path) -> Path:
    """RUN as given on the command line: a path to a run folder, or a run name under `runs_root`."""
    for candidate in (Path(run), runs_root / run):
        if (candidate / "recipe.yaml").is_file():
            return candidate
    raise UsageError(f"no run {run!r}: expected a run folder with recipe.yaml, as a path or under {runs_root}")


def check_resumable(saved: Recipe, requested: Recipe) -> None:
    """A resumed run may train for more epochs, and run differently (device, amp, channels_last, compile, data
    placement; any number of processes); anything else changes what the checkpoint means."""
    a = saved.model_dump(mode="json")
    b = requested.model_dump(mode="json")
    for free in ("epochs", *ENGINE_KEYS):
        a["train"].pop(free, None), b["train"].pop(free, None)
    changed = sorted(_diff_keys(a, b))
    if changed:
        raise UsageError(
            f"cannot resume: the recipe changed in {', '.join(changed)}; only train.epochs may change on --resume "
            f"(and how it runs: {', '.join('train.' + k for k in ENGINE_KEYS)}). Start a new run instead."
        )


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in a.keys() | b.keys():
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
