"""`maasctl evaluate`: the filed ONNX model, run by onnxruntime over its recipe's split, scored with the same
metrics as training. No torch (except for a torchvision data source, whose files torchvision reads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from maasctl.errors import UsageError
from maasctl.inputs.outputs import scores_output
from maasctl.metrics import classification_scores, regression_metrics
from maasctl.preprocess import destandardize, packed_feeds
from maasctl.repository import ModelRepository, resolve_model
from maasctl.runtime import load_model

SPLITS = ("train", "validation", "test")


def evaluate_model(spec: str, repo: str | Path, split: str = "test", batch_size: int = 256) -> dict[str, Any]:
    if split not in SPLITS:
        raise UsageError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    version = resolve_model(spec, ModelRepository(repo))
    model = load_model(version, device="cpu")
    data = _dataset(model.manifest, version.path)
    part = getattr(data, split)
    name_in, name_out = model.inputs[0].name, scores_output(model.manifest)
    names = [t.name for t in model.inputs]

    def feeds(x: np.ndarray) -> dict[str, np.ndarray]:
        return packed_feeds(x, names) if len(names) > 1 else {name_in: x}  # several: a subword text model's

    outputs = np.concatenate(
        [model.run(feeds(part.x[i : i + batch_size]), [name_out])[name_out] for i in range(0, len(part.y), batch_size)]
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


def split_inputs(manifest: dict[str, Any], split: str = "test", limit: int = 64) -> Any:
    """Up to `limit` model inputs of the split the model's recipe makes (what `benchmark` times it on)."""
    if split not in SPLITS:
        raise UsageError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
    return getattr(_dataset(manifest, None), split).x[:limit]


def _dataset(manifest: dict[str, Any], where: Path | None) -> Any:
    """The data the model's recipe (recorded in its manifest) makes, split as in training."""
    from maasctl.data import build_dataset
    from maasctl.recipe import Recipe

    recipe_doc = manifest.get("recipe")
    if recipe_doc is None:
        raise UsageError(
            f"{where or manifest.get('name', 'model')}: the manifest records no recipe (exported by an older maasctl); "
            "re-export the run"
        )
    recipe = Recipe.model_validate(recipe_doc)
    if (manifest.get("preprocessing") or {}).get("kind") == "subword":  # the filed tokenizer, not a new one
        recipe.data._subword_spec = manifest["preprocessing"]
    return build_dataset(recipe.data, recipe.train.seed, recipe.task)
