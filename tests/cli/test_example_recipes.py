"""Every example recipe runs from a fresh folder after `maasctl examples`, as its header says."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import ROOT, run_cli


def _teacher(recipe: str) -> str | None:
    """The run a distillation recipe learns from (its header trains it first), else None."""
    return (yaml.safe_load((ROOT / "recipes" / recipe).read_text()).get("distill") or {}).get("teacher")


# Students after the recipes that train their teachers, so those runs are there to learn from.
LOCAL = sorted(
    (p.name for p in (ROOT / "recipes").glob("*.yaml") if "maasctl examples" in p.read_text().splitlines()[0]),
    key=lambda name: (_teacher(name) is not None, name),
)
DOWNLOADED = ["mnist_cnn.yaml", "cifar10_resnet18.yaml"]


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("examples")
    run_cli("examples", cwd=folder)
    return folder


def test_examples_write_every_dataset(examples_dir):
    data = examples_dir / "data" / "examples"
    assert len(list((data / "digits_png").rglob("*.png"))) == 1797
    assert sorted(p.name for p in (data / "digits_png").iterdir()) == [str(d) for d in range(10)]
    assert (data / "iris.csv").read_text().splitlines()[0].endswith(",species")
    rows = [json.loads(line) for line in (data / "reviews.jsonl").read_text().splitlines()]
    assert {r["label"] for r in rows} == {"positive", "negative"} and len(rows) == 800
    penguins = (data / "penguins.csv").read_text().splitlines()
    assert penguins[0].endswith(",species") and len(penguins) == 345 and ",NA," in "\n".join(penguins)
    assert (data / "deliveries.csv").read_text().splitlines()[0].endswith(",minutes")


@pytest.mark.parametrize("recipe", LOCAL)
def test_example_recipe_trains_and_exports(examples_dir, recipe):
    teacher = _teacher(recipe)
    if teacher and not (examples_dir / teacher).is_dir():  # its header's first `maasctl train`, with its options
        header = ROOT.joinpath("recipes", recipe).read_text().splitlines()[0]
        first, *options = next(s.split()[2:] for s in header.split("&&")[1:])  # RECIPE [--set K=V ...] [--name N]
        run_cli("train", str(ROOT / first), *options, "--set", "train.epochs=1", cwd=examples_dir)
    out = run_cli("train", str(ROOT / "recipes" / recipe), "--set", "train.epochs=1", "--json", cwd=examples_dir)
    result = json.loads(out.stdout)
    exported = json.loads(run_cli("export", result["run_dir"], "--json", cwd=examples_dir).stdout)
    # The manifest carries the drift reference for the recipe's input kind (maasctl/drift.py).
    manifest = json.loads((examples_dir / exported["path"] / "model.json").read_text())
    stats = manifest["drift"]
    assert stats["input_kind"] == manifest["input_kind"]
    assert all(sum(v["counts"]) == stats["samples"] for v in stats["values"])
    if stats["input_kind"] == "tokens":  # validation: the vocabulary was built on the training split
        assert stats["reference_split"] == "validation" and [v["name"] for v in stats["values"]] == [
            "length",
            "unknown_rate",
        ]
    if stats["input_kind"] == "features":  # one value per encoded position: numbers, missing flags, categories
        assert [v["name"] for v in stats["values"]] == manifest["preprocessing"].get(
            "inputs", manifest["preprocessing"]["columns"]
        )
    evaluated = json.loads(
        run_cli("evaluate", f"{exported['name']}:{exported['version']}", "--json", cwd=examples_dir).stdout
    )
    if evaluated["task"] == "regression":  # the ONNX model's test metrics are PyTorch's, to float32 precision
        for key in ("mae", "rmse", "r2"):
            assert evaluated["metrics"][key] == pytest.approx(result["metrics"][f"test_{key}"], rel=1e-5, abs=1e-6)
        return
    assert result["metrics"]["test_accuracy"] > 0  # one epoch: it ran end to end; accuracy figures are in the README
    assert exported["top1_agreement"] == 1.0
    # The filed ONNX model, scored by onnxruntime alone, matches the PyTorch checkpoint's test accuracy (at most
    # one near-tie sample may flip between the two float32 implementations).
    assert (
        abs(evaluated["metrics"]["accuracy"] - result["metrics"]["test_accuracy"]) <= 1 / evaluated["samples"] + 1e-12
    )


@pytest.mark.parametrize("recipe", DOWNLOADED)
def test_downloaded_dataset_recipes_explain_missing_files(tmp_path, recipe):
    proc = run_cli("train", str(ROOT / "recipes" / recipe), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "data.download=true" in proc.stderr and "Traceback" not in proc.stderr
