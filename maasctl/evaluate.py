"""`maasctl evaluate`: the filed ONNX model, run by onnxruntime over its recipe's split, scored with the same
metrics as training. No torch (except for a torchvision data source, whose files torchvision reads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from maasctl.errors import UsageError
from maasctl.metrics import classification_scores, regression_metrics
from maasctl.preprocess import destandardize
from maasctl.repository import ModelRepository, resolve_model
from maasctl.runtime import load_model

SPLITS = ("train", "validation", "test")


def evaluate_model(spec: str, repo: str | Path, split: str = "test", batch_size: int = 256) -> dict[str, Any]:
    if split not in SPLITS:
        raise UsageError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    from maasctl.data import build_dataset
    from maasctl.recipe import Recipe

    version = resolve_model(spec, ModelRepository(repo))
    model = load_model(version, device="cpu")
    recipe_doc = model.manifest.get("recipe")
    if recipe_doc is None:
        raise UsageError(
            f"{version.path}: the manifest records no recipe (exported by an older maasctl); re-export the run"
        )
    recipe = Recipe.model_validate(recipe_doc)
    data = build_dataset(recipe.data, recipe.train.seed, recipe.task)
    part = getattr(data, split)
    name_in, name_out = model.inputs[0].name, model.manifest["outputs"][0]["name"]
    outputs = np.concatenate(
        [
            model.run({name_in: part.x[i : i + batch_size]}, [name_out])[name_out]
            for i in range(0, len(part.y), batch_size)
        ]
    )
    if model.manifest.get("task") == "regression":  # the graph's values are in the target's units already
        metrics = regression_metrics(destandardize(part.y, model.manifest["target"]), outputs[:, 0])
    else:
        metrics = classification_scores(part.y, outputs, data.num_classes)
    return {
        "name": version.name,
        "version": version.version,
        "task": model.manifest.get("task", "classification"),
        "split": split,
        "samples": len(part.y),
        "metrics": metrics,
    }
