"""Pruned architectures as plain data (model.params.pruned), so a pruned run rebuilds without pickle.

Structured pruning (`maasctl prune`, maasctl/train/prune.py) removes whole channels: some layers end up narrower
than their factory builds them. The run's recipe records, for each layer that changed, the shapes of its tensors
and the width attributes its forward reads (out_channels, num_features, ...). Rebuilding a pruned model is then
the factory's model with those layers cut down to the recorded shapes; the checkpoint's weights load on top. No
Torch-Pruning is needed to rebuild, export or serve, only to prune.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from maasctl.errors import UsageError

# The attributes pruning changes and a layer's forward (or its repr) reads; the rest of a layer keeps its settings.
WIDTH_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features")
WHERE = "model.params.pruned"


def record(original: nn.Module, pruned: nn.Module) -> dict[str, dict[str, Any]]:
    """What differs between the factory's model and its pruned copy: {layer: {tensor: shape, attribute: value}}."""
    spec: dict[str, dict[str, Any]] = {}
    before = dict(original.named_modules())
    for name, module in pruned.named_modules():
        old = before[name]
        changed: dict[str, Any] = {}
        for key, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if tensor is not None and tensor.shape != getattr(old, key).shape:
                changed[key] = list(tensor.shape)
        for attr in WIDTH_ATTRS:
            if hasattr(module, attr) and getattr(module, attr) != getattr(old, attr):
                changed[attr] = getattr(module, attr)
        if changed:
            spec[name] = changed
    return spec


def apply(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Cut `model`'s layers down to the recorded shapes (the leading slice of each freshly initialised tensor, so a
    model trained from scratch in this shape starts from a sound initialisation); the weights usually load next."""
    if not isinstance(spec, dict):
        raise UsageError(f"{WHERE}: expected a mapping of layer names to shapes, got {type(spec).__name__}")
    modules = dict(model.named_modules())
    for name, changed in spec.items():
        module = modules.get(name)
        if module is None or not isinstance(changed, dict):
            raise UsageError(f"{WHERE}: {name!r} is not a layer of this model (was it pruned from another?)")
        for key, value in changed.items():
            if key in WIDTH_ATTRS:
                setattr(module, key, int(value))
            else:
                _narrow(module, name, key, value)
    return model


def _narrow(module: nn.Module, name: str, key: str, shape: Any) -> None:
    tensor = getattr(module, key, None)
    if not isinstance(tensor, torch.Tensor):
        raise UsageError(f"{WHERE}: {name}.{key} is not a tensor of this model")
    if (
        not isinstance(shape, list)
        or len(shape) != tensor.dim()
        or not all(isinstance(n, int) and 0 < n <= size for n, size in zip(shape, tensor.shape))
    ):
        raise UsageError(
            f"{WHERE}: {name}.{key} has shape {list(tensor.shape)} before pruning; {shape} cannot be cut from it"
        )
    cut = tensor.detach()[tuple(slice(0, n) for n in shape)].clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, key, nn.Parameter(cut, requires_grad=tensor.requires_grad))
    else:
        module.register_buffer(key, cut, persistent=key not in module._non_persistent_buffers_set)


def load_pretrained(model: nn.Module, spec: str, name: str) -> None:
    """`pretrained` for a pruned model: a pruned run's weights, loaded as the factory would load them (the
    classifier may differ, for another set of classes)."""
    from pathlib import Path

    if name.startswith("timm/"):
        from maasctl.models.timm_models import load_weights

        load_weights(model, spec, name)
        return
    from maasctl.models.vision import load_pretrained as load_torchvision

    folder = Path(spec).expanduser()
    if (folder / "checkpoints" / "best.pt").is_file():  # a run folder: its best checkpoint
        spec = str(folder / "checkpoints" / "best.pt")
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    load_torchvision(model, spec, name=name, head=f"{linear[-1]}." if linear else "\0")


def pretrained_hint(spec: Any) -> str:
    """When `pretrained` names a pruned run's checkpoint, how to load it (its shapes go beside it); else ""."""
    from pathlib import Path

    if not isinstance(spec, str):
        return ""
    file = Path(spec.removeprefix("run:")).expanduser()
    for candidate in (
        file,
        file / "checkpoints" / "best.pt",
        Path("artifacts") / "runs" / file / "checkpoints" / "best.pt",
    ):
        if candidate.is_file():
            try:
                meta = torch.load(candidate, map_location="cpu", weights_only=True).get("meta") or {}
            except Exception:  # not a maasctl checkpoint: no hint to give
                return ""
            if "pruned" in (meta.get("model_params") or {}):
                return (
                    f"{candidate} comes from a pruned run: give its layer shapes beside pretrained, "
                    "model.params.pruned as in that run's recipe.yaml."
                )
            return ""
    return ""
