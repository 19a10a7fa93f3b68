"""torchvision architectures by their torchvision names, adapted to the data: any channel count, small images.

Weights are never downloaded: every network is built with `weights=None`. `pretrained` takes the path of a
local state_dict file instead (e.g. one saved from torchvision, or the "model" of a maasctl checkpoint).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maasctl.errors import UsageError
from maasctl.models.registry import register_model

log = logging.getLogger(__name__)

STEMS = ("auto", "imagenet", "small")
SMALL_IMAGE = 64  # stem "auto" keeps the ImageNet stem (stride 4 for resnets, 2 otherwise) from this side length up


# --- blocks ------------------------------------------------------------------------------------------------


def _torchvision_models():
    """torchvision.models, imported when a network is built: listing the registry should not pay for torchvision."""
    from torchvision import models

    return models


def _check_image(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise UsageError(
            f"model.name: {name} takes images (C,H,W), but this data has samples of shape {list(input_shape)}"
        )
    c, h, w = input_shape
    return c, h, w


def _small_stem(name: str, stem: str, h: int, w: int) -> bool:
    if stem not in STEMS:
        raise UsageError(f"model.params.stem: {name} takes one of {', '.join(STEMS)}, not {stem!r}")
    return stem == "small" or (stem == "auto" and min(h, w) < SMALL_IMAGE)


def _conv_like(
    old: nn.Conv2d, in_channels: int, *, kernel_size: int | None = None, stride: int | None = None
) -> nn.Conv2d:
    """A freshly initialised copy of `old` with other input channels, kernel size or stride ("same" padding kept)."""
    k = kernel_size or old.kernel_size[0]
    conv = nn.Conv2d(
        in_channels, old.out_channels, k, stride=stride or old.stride[0], padding=k // 2, bias=old.bias is not None
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision initialises its convs
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _adapt_first_conv(features: nn.Sequential, in_channels: int, small: bool) -> None:
    """MobileNet/EfficientNet stem (features[0][0], 3x3 stride 2): other channels; stride 1 for small images."""
    old = features[0][0]
    if in_channels != old.in_channels or small:
        features[0][0] = _conv_like(old, in_channels, stride=1 if small else None)


def load_pretrained(model: nn.Module, path: str, *, name: str, head: str) -> None:
    """Load the local state_dict at `path` into `model`, strictly except for the classifier head.

    Keys under `head` (e.g. "fc.") are skipped when their shapes differ (another class count): the head keeps its
    fresh initialisation. A missing file, an unreadable one, or any other missing, extra or misshapen key raises
    UsageError naming the file and the keys.
    """
    file = Path(path).expanduser()
    where = "model.params.pretrained"
    if not file.is_file():
        raise UsageError(
            f"{where}: there is no file at {file}. `pretrained` takes the path of a local state_dict file "
            f"(torch.save(model.state_dict(), path)) for {name}; weights are never downloaded."
        )
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file, a pickle needing code, not a torch file at all
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UsageError(f"{where}: {file} cannot be read as a PyTorch state_dict for {name} ({reason}).") from None
    state = _find_state_dict(loaded)
    if state is None:
        raise UsageError(
            f"{where}: {file} holds a {type(loaded).__name__}, not a state_dict (a mapping of parameter names to "
            f"tensors, or a checkpoint with one under 'model' or 'state_dict'), so {name} cannot load it."
        )

    own = model.state_dict()
    head_keys = [k for k in own if k.startswith(head)]
    skipped = [k for k in head_keys if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
    if skipped:
        skipped = head_keys  # all of the head or none of it
        log.info(
            "pretrained %s: the head %s* does not fit this data's classes; it stays freshly initialised", file, head
        )
    state = {k: v for k, v in state.items() if k not in skipped}
    # BatchNorm's counter is bookkeeping, not a weight; older checkpoints lack it.
    missing = [k for k in own if k not in state and k not in skipped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    misshapen = [
        f"{k} {list(state[k].shape)} in the file, {list(own[k].shape)} in the model"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or misshapen:
        problems = []
        if misshapen:
            problems.append(f"{len(misshapen)} tensors differ in shape ({_some(misshapen)})")
        if missing:
            problems.append(f"{len(missing)} model tensors are not in the file ({_some(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} tensors in the file are not in the model ({_some(unexpected)})")
        raise UsageError(
            f"{where}: {file} does not fit {name} as built for this data: {'; '.join(problems)}. The file must come "
            f"from the same architecture with the same input channels and settings (stem, width_mult, patch_size); "
            f"only the classifier head ({head}*) may differ."
        )
    model.load_state_dict({**{k: own[k] for k in own if k not in state}, **state}, strict=True)


def _find_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    def is_state(d: Any) -> bool:
        return (
            isinstance(d, Mapping)
            and len(d) > 0
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in d.items())
        )

    for candidate in (obj, *(obj.get(k) for k in ("model", "state_dict") if isinstance(obj, Mapping))):
        if is_state(candidate):
            state = dict(candidate)
            for prefix in ("module.", "_orig_mod."):  # saved from DistributedDataParallel, or a torch.compile'd model
                if all(k.startswith(prefix) for k in state):
                    state = {k.removeprefix(prefix): v for k, v in state.items()}
            return state
    return None


def _some(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f", … {len(items) - n} more" if len(items) > n else "")


def _finish(model: nn.Module, pretrained: str | None, name: str, head: str) -> nn.Module:
    if pretrained is not None:
        load_pretrained(model, pretrained, name=name, head=head)
    return model


# --- models --------------------------------------------------------------------------------------------------


def _resnet(name: str, input_shape: tuple[int, ...], num_classes: int, stem: str, pretrained: str | None) -> nn.Module:
    c, h, w = _check_image(name, input_shape)
    model = getattr(_torchvision_models(), name)(weights=None, num_classes=num_classes)
    if _small_stem(name, stem, h, w):
        # CIFAR-style stem: 3x3 stride-1 conv and no max-pool, so 32x32 images reach layer4 at 4x4, not 1x1.
        model.conv1 = _conv_like(model.conv1, c, kernel_size=3, stride=1)
        model.maxpool = nn.Identity()
    elif c != 3:
        model.conv1 = _conv_like(model.conv1, c)
    return _finish(model, pretrained, name, head="fc.")


def _mobilenet_v3(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    stem: str,
    width_mult: float,
    dropout: float,
    pretrained: str | None,
) -> nn.Module:
    c, h, w = _check_image(name, input_shape)
    if width_mult <= 0:
        raise UsageError(f"model.params.width_mult: {name} needs a positive width multiplier, not {width_mult}")
    model = getattr(_torchvision_models(), name)(
        weights=None, num_classes=num_classes, width_mult=width_mult, dropout=dropout
    )
    _adapt_first_conv(model.features, c, _small_stem(name, stem, h, w))
    return _finish(model, pretrained, name, head="classifier.3.")


# --- registered variants -------------------------------------------------------------------------------------


@register_model(inputs=("image",))
def resnet18(
    input_shape: tuple[int, ...], num_classes: int, stem: str = "auto", pretrained: str | None = None
) -> nn.Module:
    """torchvision ResNet-18 (11M params); stem auto: CIFAR-style 3x3 stem below 64 px; pretrained: local state_dict."""
    return _resnet("resnet18", input_shape, num_classes, stem, pretrained)


@register_model(inputs=("image",))
def resnet50(
    input_shape: tuple[int, ...], num_classes: int, stem: str = "auto", pretrained: str | None = None
) -> nn.Module:
    """torchvision ResNet-50 (24M params); stem auto: CIFAR-style 3x3 stem below 64 px; pretrained: local state_dict."""
    return _resnet("resnet50", input_shape, num_classes, stem, pretrained)


@register_model(inputs=("image",))
def mobilenet_v3_small(
    input_shape: tuple[int, ...],
    num_classes: int,
    stem: str = "auto",
    width_mult: float = 1.0,
    dropout: float = 0.2,
    pretrained: str | None = None,
) -> nn.Module:
    """torchvision MobileNetV3-Small (1.5M params at width_mult 1); stem auto: stride-1 stem below 64 px."""
    return _mobilenet_v3("mobilenet_v3_small", input_shape, num_classes, stem, width_mult, dropout, pretrained)


@register_model(inputs=("image",))
def mobilenet_v3_large(
    input_shape: tuple[int, ...],
    num_classes: int,
    stem: str = "auto",
    width_mult: float = 1.0,
    dropout: float = 0.2,
    pretrained: str | None = None,
) -> nn.Module:
    """torchvision MobileNetV3-Large (4.2M params at width_mult 1); stem auto: stride-1 stem below 64 px."""
    return _mobilenet_v3("mobilenet_v3_large", input_shape, num_classes, stem, width_mult, dropout, pretrained)


@register_model(inputs=("image",))
def efficientnet_b0(
    input_shape: tuple[int, ...],
    num_classes: int,
    stem: str = "auto",
    dropout: float = 0.2,
    stochastic_depth: float = 0.2,
    pretrained: str | None = None,
) -> nn.Module:
    """torchvision EfficientNet-B0 (4M params); stem auto: stride-1 stem below 64 px; pretrained: local state_dict."""
    c, h, w = _check_image("efficientnet_b0", input_shape)
    tvm = _torchvision_models()
    model = tvm.efficientnet_b0(
        weights=None, num_classes=num_classes, dropout=dropout, stochastic_depth_prob=stochastic_depth
    )
    _adapt_first_conv(model.features, c, _small_stem("efficientnet_b0", stem, h, w))
    return _finish(model, pretrained, "efficientnet_b0", head="classifier.1.")


@register_model(inputs=("image",))
def vit_b_16(
    input_shape: tuple[int, ...],
    num_classes: int,
    patch_size: int | None = None,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    pretrained: str | None = None,
) -> nn.Module:
    """torchvision ViT-B/16 (86M params) for square images; patch_size null: 16, or the largest divisor <= 16 of the side.

    The encoder is ViT-B's (12 layers, 12 heads, width 768, MLP 3072); image_size is the data's, and the patch
    size must divide it. A patch size other than 16 changes only the patch projection and the position table.
    """
    c, h, w = _check_image("vit_b_16", input_shape)
    if h != w:
        raise UsageError(
            f"model.name: vit_b_16 needs square images, but this data has {h}x{w}; resize them (data.image_size)"
        )
    if patch_size is None:
        patch_size = max(p for p in range(1, 17) if h % p == 0)
    elif patch_size < 1 or h % patch_size:
        raise UsageError(
            f"model.params.patch_size: {patch_size} does not divide the image side {h}; pick a divisor of {h}"
        )
    model = _torchvision_models().VisionTransformer(
        image_size=h,
        patch_size=patch_size,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        mlp_dim=3072,
        dropout=dropout,
        attention_dropout=attention_dropout,
        num_classes=num_classes,
    )
    if c != 3:
        old = model.conv_proj
        model.conv_proj = nn.Conv2d(c, old.out_channels, patch_size, stride=patch_size)
        # torchvision's own initialisation of the patch projection (LeCun normal)
        nn.init.trunc_normal_(model.conv_proj.weight, std=(1.0 / (c * patch_size * patch_size)) ** 0.5)
        nn.init.zeros_(model.conv_proj.bias)
    return _finish(model, pretrained, "vit_b_16", head="heads.head.")
