"""benchmarks/reuse.py: which finished runs and exported models `benchmarks/compression.py --keep DIR` reuses.

Run and model folders are written here as training, pruning and export write them (summary.json at the end of a run,
model.json per model version); nothing is trained.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from maasctl.recipe import load_recipe, recipe_sha256

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reuse import finished_export, finished_prune, finished_run  # noqa: E402

RECIPE = ROOT / "recipes" / "digits_folder_resnet18.yaml"


def sha(*overrides: str) -> str:
    return recipe_sha256(load_recipe(RECIPE, list(overrides)))


def run_folder(runs: Path, name: str, recipe_sha: str | None, **summary: object) -> Path:
    """A run folder; `recipe_sha` None: a run still training (no summary.json yet)."""
    run = runs / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: x\n")
    if recipe_sha is not None:
        (run / "summary.json").write_text(json.dumps({"run": name, "recipe_sha256": recipe_sha, **summary}))
    return run


def model_version(repo: Path, name: str, version: int, run: Path, recipe_sha: str, method: str | None) -> None:
    folder = repo / name / str(version)
    folder.mkdir(parents=True)
    manifest = {"format": "maasctl.model/1", "source": {"run": str(run.resolve()), "recipe_sha256": recipe_sha}}
    if method:
        manifest["compression"] = {"method": method, "mode": "static"}
    (folder / "model.json").write_text(json.dumps(manifest))


def test_a_finished_run_with_the_same_resolved_recipe_is_reused_whatever_its_name(tmp_path):
    runs = tmp_path / "runs"
    student = ("train.seed=0", "model.name=cnn_small", "model.params.width=4")
    run_folder(runs, "w4-scratch-6-s0", sha(*student))  # a run of an earlier sweep, same settings
    run_folder(runs, "scratch-s1", sha("train.seed=1", *student[1:]))
    assert finished_run(runs, "scratch-s0", sha(*student)) == runs / "w4-scratch-6-s0"
    # the order of the --set overrides does not matter, their values do: epochs, width, seed
    assert finished_run(runs, "scratch-s0", sha(*reversed(student))) == runs / "w4-scratch-6-s0"
    assert finished_run(runs, "scratch-s0", sha(*student, "train.epochs=12")) is None
    assert finished_run(runs, "scratch-s0", sha("train.seed=2", *student[1:])) is None


def test_the_named_run_comes_first_and_an_unfinished_one_is_never_reused(tmp_path):
    runs = tmp_path / "runs"
    recipe = sha("train.seed=0")
    run_folder(runs, "a-copy", recipe)
    run_folder(runs, "teacher-s0", recipe)
    assert finished_run(runs, "teacher-s0", recipe) == runs / "teacher-s0"
    run_folder(runs, "teacher-s1", None)  # interrupted: no summary.json
    assert finished_run(runs, "teacher-s1", sha("train.seed=1")) is None
    assert finished_run(tmp_path / "no-runs-yet", "teacher-s0", recipe) is None


def test_an_export_is_reused_only_from_the_same_run_with_the_same_compression(tmp_path):
    runs, repo = tmp_path / "artifacts" / "runs", tmp_path / "artifacts" / "models"
    recipe = sha("train.seed=0")
    run = run_folder(runs, "teacher-s0", recipe)
    other = run_folder(runs, "teacher-s0-2", recipe)
    model_version(repo, "teacher-s0-fp32", 1, run, recipe, None)
    model_version(repo, "teacher-s0-int8", 1, run, recipe, "int8")
    assert finished_export(repo, "teacher-s0-fp32", run, None)
    assert finished_export(repo, "teacher-s0-int8", run, "int8")
    assert not finished_export(repo, "teacher-s0-fp32", run, "int8")  # fp32 filed where int8 is wanted
    assert not finished_export(repo, "teacher-s0-int8", run, None)
    assert not finished_export(repo, "teacher-s0-fp32", other, None)  # the same recipe, another run's weights
    assert not finished_export(repo, "scratch-s0-fp32", run, None)
    model_version(repo, "teacher-s0-fp32", 2, other, recipe, None)  # the latest version is what gets measured
    assert not finished_export(repo, "teacher-s0-fp32", run, None)
    assert finished_export(repo, "teacher-s0-fp32", other, None)


def test_a_pruned_run_is_reused_for_the_same_parent_ratio_importance_and_epochs(tmp_path):
    runs = tmp_path / "runs"
    parent = run_folder(runs, "teacher-s0", sha("train.seed=0"))
    pruning = {
        "parent_run": str(parent.resolve()),
        "parent_recipe_sha256": sha("train.seed=0"),
        "target": {"ratio": 0.5},
        "importance": "l1",
    }
    run_folder(runs, "teacher-s0-pruned50", "child-sha", epochs=3, pruning=pruning)
    same = {"ratio": 0.5, "importance": "l1", "epochs": 3}
    assert finished_prune(runs, "teacher-s0-pruned50", parent, **same) == runs / "teacher-s0-pruned50"
    assert finished_prune(runs, "teacher-s0-pruned50", parent, **{**same, "epochs": 1}) is None
    assert finished_prune(runs, "teacher-s0-pruned50", parent, **{**same, "ratio": 0.25}) is None
    assert finished_prune(runs, "teacher-s0-pruned50", parent, **{**same, "importance": "taylor"}) is None
    retrained = run_folder(runs, "teacher-s0-2", sha("train.seed=0"))  # same recipe, another folder
    assert finished_prune(runs, "teacher-s0-2-pruned50", retrained, **same) is None
