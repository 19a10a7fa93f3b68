"""Fine-tuning a pretrained model (train.finetune): the data keys its pretrained configuration gives, the optimizer's
parameter groups (classifier head, backbone, layer-wise learning-rate decay), and freezing the backbone.

A frozen backbone keeps its parameters in the optimizer with a learning-rate factor of 0 (so DistributedDataParallel
sees the same parameters before and after unfreezing) and its BatchNorm layers in eval mode (running statistics as
loaded). Frozen for the whole run (`all`), its parameters stop computing gradients as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from maasctl.errors import UsageError
from maasctl.recipe import Recipe
from maasctl.recipe.schema import StreamedImages

DATA_KEYS = ("image_size", "mean", "std", "crop_fraction", "interpolation")


def with_model_defaults(recipe: Recipe) -> Recipe:
    """The recipe with the data keys it leaves null filled from the model's pretrained configuration (timm models),
    so that the saved recipe, the preprocessing and the manifest hold the values used."""
    data = recipe.data
    if not isinstance(data, StreamedImages) or not recipe.model.name.startswith("timm/"):
        return recipe
    from maasctl.models import timm_models

    defaults = timm_models.model_defaults(recipe.model.name)
    updates = {k: defaults[k] for k in DATA_KEYS if getattr(data, k) is None and k in defaults}
    if data.channels == 1:  # a greyscale input: the average of the RGB statistics
        for k in ("mean", "std"):
            if k in updates:
                updates[k] = [sum(updates[k]) / len(updates[k])]
    if "image_size" in updates:
        updates["image_size"] = tuple(updates["image_size"])
    return recipe.model_copy(update={"data": data.model_copy(update=updates)})


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The classifier's module names: timm's pretrained_cfg names it; elsewhere the last Linear layer."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    named = cfg.get("classifier")
    if named:
        return (named,) if isinstance(named, str) else tuple(named)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return (linear[-1],) if linear else ()


def _is_head(name: str, heads: tuple[str, ...]) -> bool:
    return any(name == h or name.startswith(h + ".") for h in heads)


class Finetune:
    """Parameter groups and freezing for one model and recipe; `plain` when the recipe asks for nothing."""

    def __init__(self, recipe: Recipe, model: nn.Module, steps_per_epoch: int) -> None:
        f, o = recipe.train.finetune, recipe.train.optimizer
        self.cfg, self.model = f, model
        self.plain = f.freeze_backbone_epochs == 0 and f.head_lr is None and f.layer_decay is None
        self.heads = head_prefixes(model)
        if not self.plain and not self.heads:
            raise UsageError(f"train.finetune: cannot tell the classifier head of {recipe.model.name}")
        frozen_epochs = f.freeze_backbone_epochs
        self.frozen_steps = math.inf if frozen_epochs == "all" else frozen_epochs * steps_per_epoch
        self.frozen_epochs = math.inf if frozen_epochs == "all" else frozen_epochs
        if frozen_epochs == "all":
            for name, p in model.named_parameters():
                p.requires_grad_(_is_head(name, self.heads))
        self.groups = self._groups(recipe.model.name, o.lr, o.weight_decay)

    def _groups(self, model_name: str, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        if self.plain:
            return [{"params": list(self.model.parameters()), "lr": lr, "backbone": False}]
        head_ids = {id(p) for n, p in self.model.named_parameters() if _is_head(n, self.heads)}
        head_lr = self.cfg.head_lr or lr
        if self.cfg.layer_decay is None:
            scaled = [{"params": list(self.model.parameters()), "lr_scale": 1.0, "weight_decay": weight_decay}]
        else:
            if not model_name.startswith("timm/"):
                raise UsageError(
                    "train.finetune.layer_decay: needs a timm model (timm/<name>), whose layers timm knows"
                )
            from timm.optim import param_groups_layer_decay

            scaled = param_groups_layer_decay(self.model, weight_decay=weight_decay, layer_decay=self.cfg.layer_decay)
        groups = []
        for g in scaled:  # split each group into its head and backbone parameters
            for backbone in (True, False):
                params = [p for p in g["params"] if (id(p) not in head_ids) == backbone]
                if params:
                    rate = lr * g.get("lr_scale", 1.0) if backbone else head_lr
                    groups.append(
                        {"params": params, "lr": rate, "weight_decay": g["weight_decay"], "backbone": backbone}
                    )
        return groups

    def gates(self) -> list[Callable[[int], float]] | None:
        """Per parameter group, the learning-rate factor at a step: 0 for the backbone while it is frozen."""
        if self.plain or self.frozen_steps == 0:
            return None
        limit = self.frozen_steps
        return [(lambda s: 0.0 if s < limit else 1.0) if g["backbone"] else (lambda s: 1.0) for g in self.groups]

    def epoch_start(self, epoch: int) -> None:
        """After model.train(): frozen layers' BatchNorm in eval mode, so their running statistics stay as loaded."""
        if epoch >= self.frozen_epochs or not self.cfg.freeze_bn:
            return
        for name, m in self.model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not _is_head(name, self.heads):
                m.eval()


def optimizer_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groups as torch.optim takes them (without our 'backbone' mark)."""
    return [{k: v for k, v in g.items() if k != "backbone"} for g in groups]
