"""Which finished runs and exported models a benchmark can reuse instead of training or exporting again (`--keep DIR`).

A run is reused when it finished (its summary.json is written only at the end of training) with the same resolved
recipe: the sha256 that training records (maasctl.recipe.recipe_sha256) covers the recipe file and every `--set`
override, seed and epochs included. An exported model is reused when its latest version was exported from that
very run folder, with the same recipe sha256, and with the same compression (none, or `--quantize int8`). A pruned
run is reused when it was pruned from the same parent run (folder and recipe sha256) with the same ratio and importance,
and fine-tuned for the same epochs. Anything else (an unfinished run, another seed, a model re-exported from another
run) is trained or exported again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _summary(run: Path) -> dict[str, Any] | None:
    try:
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _runs(runs_root: Path, name: str) -> list[Path]:
    """`name` first (the run the benchmark would create), then every other run folder, in name order."""
    if not runs_root.is_dir():
        return []
    others = sorted(p for p in runs_root.iterdir() if p.is_dir() and p.name != name)
    return [runs_root / name, *others]


def finished_run(runs_root: Path, name: str, recipe_sha256: str) -> Path | None:
    """A finished run under `runs_root` trained with the resolved recipe whose sha256 is `recipe_sha256`, or None."""
    for run in _runs(runs_root, name):
        summary = _summary(run)
        if summary is not None and summary.get("recipe_sha256") == recipe_sha256:
            return run
    return None


def finished_prune(
    runs_root: Path, name: str, parent: Path, *, ratio: float, importance: str, epochs: int
) -> Path | None:
    """A finished pruned run under `runs_root`: pruned from `parent` (same recipe sha256) to `ratio` of its channels
    by `importance`, fine-tuned for `epochs`; or None."""
    parent_sha = (_summary(parent) or {}).get("recipe_sha256")
    for run in _runs(runs_root, name):
        summary = _summary(run) or {}
        pruning = summary.get("pruning") or {}
        if (
            parent_sha is not None
            and pruning.get("parent_run") == str(parent.resolve())
            and pruning.get("parent_recipe_sha256") == parent_sha
            and pruning.get("target") == {"ratio": ratio}
            and pruning.get("importance") == importance
            and summary.get("epochs") == epochs
        ):
            return run
    return None


def finished_export(repo: Path, name: str, run: Path, method: str | None) -> bool:
    """Whether the latest version of model `name` in the repository `repo` was exported from the finished run `run`
    (same folder, same recipe sha256) with compression `method` (None: plain fp32; "int8")."""
    summary = _summary(run)
    versions = sorted(int(p.name) for p in (repo / name).glob("*") if p.name.isdigit())
    if summary is None or not versions:
        return False
    try:
        manifest = json.loads((repo / name / str(versions[-1]) / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    source = manifest.get("source") or {}
    return (
        source.get("run") == str(run.resolve())
        and source.get("recipe_sha256") == summary.get("recipe_sha256")
        and (manifest.get("compression") or {}).get("method") == method
    )
