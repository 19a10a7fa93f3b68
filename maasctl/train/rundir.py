"""Run folders under artifacts/runs/: created with a fresh name, never reused or overwritten."""

from __future__ import annotations

from pathlib import Path

from maasctl.errors import UsageError


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
