"""`maasctl prune RUN`: structured pruning with Torch-Pruning, then a short fine-tune, as a new run.

Whole channels go (a convolution's filters with the matching BatchNorm entries and the next layer's inputs, across
residual connections: Torch-Pruning follows the dependency graph), so the exported ONNX graph is really smaller and
faster. The classifier keeps its outputs, the first layer its input channels. The pruned layer shapes are recorded in
the new run's recipe (model.params.pruned, maasctl/models/pruned.py): export, evaluation, resume and
`model.params.pretrained` rebuild the model from them, without pickle and without Torch-Pruning.

Covered: networks of convolutions, linear layers and BatchNorm with parameter-free glue (cnn_small, mlp, torchvision
CNNs such as resnet*/mobilenet*, timm CNNs). Refused: recurrent and attention models (lstm, gru, transformer,
hf_encoder, vision transformers), and any layer type with weights of its own beyond those three.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maasctl.data import build_dataset
from maasctl.errors import UsageError
from maasctl.fileio import atomic_write_json
from maasctl.models import build_model_from_meta
from maasctl.recipe import Recipe, load_recipe
from maasctl.train.checkpoint import load_best_model
from maasctl.train.finetune import head_prefixes, with_model_defaults
from maasctl.train.objective import Objective

IMPORTANCE = ("l1", "l2", "taylor", "random")
# Layers whose weights Torch-Pruning cuts and maasctl/models/pruned.py records; anything else with weights is refused.
PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)
MACS_STEPS = 40  # a MACs target is approached in this many growing steps of the channel ratio
CALIBRATION = 64  # training samples that trace the graph and, for taylor, give the gradients


@dataclass
class Target:
    ratio: float | None = None  # share of each layer's channels removed
    macs: float | None = None  # share of the multiply-accumulates removed

    def describe(self) -> str:
        return f"ratio {self.ratio}" if self.ratio is not None else f"MACs -{self.macs:.0%}"


def check_target(ratio: float | None, macs: float | None) -> Target:
    if ratio is not None and macs is not None:
        raise UsageError("--ratio and --macs: give one target, the share of channels or of MACs to remove")
    if ratio is None and macs is None:
        ratio = 0.5
    for flag, value in (("--ratio", ratio), ("--macs", macs)):
        if value is not None and not 0 < value < 1:
            raise UsageError(f"{flag} {value}: give the share to remove, above 0 and below 1 (0.5 = half)")
    return Target(ratio, macs)


def check_prunable(model: nn.Module, meta: dict[str, Any], run_dir: Path) -> str:
    """The classifier's module name; refuses what Torch-Pruning's channel surgery cannot handle here."""
    name = meta["model_name"]
    if meta.get("input_kind") in ("tokens", "subword"):
        raise UsageError(
            f"{run_dir}: {name} reads {meta['input_kind']}; pruning covers convolutional and MLP models (image or "
            "feature inputs), not sequence or transformer models. Nothing was written."
        )
    foreign = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if not isinstance(m, PRUNABLE) and any(True for _ in m.parameters(recurse=False))
        }
    )
    if foreign:
        raise UsageError(
            f"{run_dir}: {name} has layers pruning does not cover ({', '.join(foreign)}); it covers networks of "
            "convolutions, linear layers and BatchNorm (cnn_small, mlp, torchvision and timm CNNs), not recurrent or "
            "attention models. Nothing was written."
        )
    heads = head_prefixes(model)
    if not heads:
        raise UsageError(f"{run_dir}: {name} has no linear classifier to keep whole; it cannot be pruned here")
    return heads[0]


def _importance(kind: str):
    import torch_pruning as tp

    if kind not in IMPORTANCE:
        raise UsageError(f"--importance {kind!r}: use one of {', '.join(IMPORTANCE)}")
    return {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "taylor": tp.importance.TaylorImportance,  # first-order: |weight × gradient| on a training batch
        "random": tp.importance.RandomImportance,
    }[kind]()


def count(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(multiply-accumulates per sample, parameters)."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example[:1])
    return int(macs), int(params)


def prune_model(
    model: nn.Module,
    head: str,
    batch: tuple[torch.Tensor, torch.Tensor],
    objective: Objective,
    target: Target,
    importance: str,
    round_to: int | None = None,
) -> nn.Module:
    """`model` pruned in place to the target: one step to a channel ratio, or growing steps until the MACs fall to
    the target."""
    import torch_pruning as tp

    x, y = batch
    base_macs, _ = count(model, x)
    steps = 1 if target.ratio is not None else MACS_STEPS
    modules = dict(model.named_modules())
    with warnings.catch_warnings():
        # Torch-Pruning warns about its own defaults (unwrapped parameters, which the layer check above excludes)
        warnings.simplefilter("ignore", UserWarning)
        pruner = tp.pruner.MetaPruner(
            model,
            x[:2],
            importance=_importance(importance),
            pruning_ratio=target.ratio if target.ratio is not None else 0.95,
            iterative_steps=steps,
            ignored_layers=[modules[head]],
            round_to=round_to,
        )
        for _ in range(steps):
            if importance == "taylor":
                model.zero_grad()
                objective.loss(model(x), y).backward()
            pruner.step()
            if target.macs is not None and count(model, x)[0] <= (1 - target.macs) * base_macs:
                break
    model.zero_grad(set_to_none=True)
    if target.macs is not None and count(model, x)[0] > (1 - target.macs) * base_macs:
        raise UsageError(f"--macs {target.macs}: pruning 95% of the channels does not remove that much; aim lower")
    return model


@dataclass
class PruneResult:
    run_dir: Path
    pruning: dict[str, Any]  # what summary.json records under "pruning"


def prune_run(
    parent: Path,
    runs_root: Path,
    *,
    target: Target,
    importance: str = "l1",
    epochs: int = 3,
    lr: float | None = None,
    name: str | None = None,
    device: str | None = None,
    round_to: int | None = None,
    log: Callable[[str], None] = lambda message: None,
    on_epoch: Callable[[dict[str, Any], int], None] | None = None,
) -> PruneResult:
    """Prune `parent`'s best checkpoint, fine-tune it with the parent's recipe for `epochs`, as a new run. Every check
    and the pruning itself come before the run folder exists: a refusal leaves nothing behind."""
    from maasctl.models import pruned as shapes
    from maasctl.train.rundir import create_run_dir
    from maasctl.train.trainer import Trainer

    _check_options(importance, epochs, lr, device)
    recipe, meta, model, head = _load_parent(parent)
    data = build_dataset(recipe.data, recipe.train.seed, recipe.task)
    batch = (torch.as_tensor(data.train.x[:CALIBRATION]), torch.as_tensor(data.train.y[:CALIBRATION]))
    macs_before, params_before = count(model.eval(), batch[0])
    log(f"pruning {meta['model_name']} ({params_before:,} parameters) to {target.describe()}, {importance} importance")
    prune_model(model, head, batch, Objective(recipe.train, data, torch.device("cpu")), target, importance, round_to)
    macs_after, params_after = count(model, batch[0])
    # The record is against the factory's model, so a pruned run pruned again still records every narrowed layer.
    factory = build_model_from_meta({**meta, "model_params": _unpruned(meta["model_params"])}, weights_follow=True)
    child = _child_recipe(recipe, shapes.record(factory, model), epochs=epochs, lr=lr, name=name, device=device)
    trainer = Trainer(child, data=data)  # builds the model from the recorded shapes: the round trip is checked here
    trainer.model.load_state_dict(model.state_dict())
    pruning = {
        "parent_run": str(parent.resolve()),
        "parent_recipe_sha256": meta["recipe_sha256"],
        "target": {"ratio": target.ratio} if target.ratio is not None else {"macs": target.macs},
        **{"importance": importance, "round_to": round_to},
        "torch_pruning": _tp_version(),
        "params_before": params_before,
        "params_after": params_after,
        "macs_before": macs_before,
        "macs_after": macs_after,
        "parent_metrics": _parent_metrics(parent),
        "metrics_before_finetune": {f"test_{k}": v for k, v in _headline(trainer.score("test")).items()},
    }
    try:
        run_dir = trainer.on_main(lambda: create_run_dir(runs_root, child.name))
        log(f"run folder: {run_dir} (fine-tuning {epochs} epoch(s))")
        result = trainer.fit(run_dir, on_epoch=on_epoch)
    finally:
        trainer.close()
    pruning["metrics_after"] = {k: v for k, v in result.metrics.items() if k.startswith("test_")}
    summary = json.loads((run_dir / "summary.json").read_text())
    atomic_write_json(run_dir / "summary.json", {**summary, "pruning": pruning})
    return PruneResult(run_dir, pruning)


def _check_options(importance: str, epochs: int, lr: float | None, device: str | None) -> None:
    """The fine-tuning options, before any work."""
    _importance(importance)
    if epochs < 1:
        raise UsageError(f"--epochs {epochs}: fine-tune for 1 epoch or more")
    if lr is not None and lr <= 0:
        raise UsageError(f"--lr {lr}: give a learning rate above 0")
    if device is not None and device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device {device!r}: use auto, cpu or cuda")


def _load_parent(parent: Path) -> tuple[Recipe, dict[str, Any], nn.Module, str]:
    """The parent's recipe, its best checkpoint's metadata and model, and the classifier's name; refused when the
    pruner does not cover the architecture."""
    recipe = with_model_defaults(load_recipe(parent / "recipe.yaml"))
    model, meta = load_best_model(parent)
    return recipe, meta, model, check_prunable(model, meta, parent)


def _unpruned(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "pruned"}


def _child_recipe(
    recipe: Recipe, spec: dict[str, Any], *, epochs: int, lr: float | None, name: str | None, device: str | None
) -> Recipe:
    """The parent's recipe with the pruned shapes, the fine-tuning epochs (and lr, device), and a name of its own."""
    raw = recipe.model_dump(mode="json")
    raw["name"] = name or f"{recipe.name}-pruned"
    raw["model"]["params"] = {**_unpruned(raw["model"]["params"]), "pruned": spec}
    raw["train"]["epochs"] = epochs
    if lr is not None:
        raw["train"]["optimizer"]["lr"] = lr
    if device is not None:
        raw["train"]["device"] = device
    return Recipe.model_validate(raw)


def _headline(scores: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics of a split (no confusion matrix or raw predictions)."""
    return {k: v for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _parent_metrics(parent: Path) -> dict[str, Any]:
    try:
        metrics = json.loads((parent / "summary.json").read_text())["metrics"]
    except (OSError, ValueError, KeyError):  # a run interrupted before its test: no figures to compare with
        return {}
    return {k: v for k, v in metrics.items() if k.startswith("test_")}


def _tp_version() -> str:
    from importlib.metadata import version

    return version("torch-pruning")  # the distribution's; 1.6.1's module still says 1.6.0
