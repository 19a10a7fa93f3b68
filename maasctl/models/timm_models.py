"""Image models from timm (pytorch-image-models) by name: `model.name: timm/<architecture>`, e.g. timm/resnet50,
timm/convnext_tiny, timm/efficientnet_b0, timm/mobilenetv3_large_100, timm/vit_small_patch16_224.

timm's registry carries each architecture's pretrained input size, mean/std, crop fraction and interpolation; they
fill the data keys a recipe leaves null (`model_defaults`), so the manifest's preprocessing is the one the weights
were trained with. Weights are never downloaded; `pretrained` takes:

- a local weights file: `.safetensors` (read with safetensors), or a PyTorch state_dict / checkpoint (`torch.load`
  with weights_only=True: no pickled code runs);
- a previous maasctl run, `run:<name or folder>`: its best checkpoint (transfer from one dataset to another);
- `hub` or `hub:<tag>`: timm's published weights, from the local Hugging Face cache (or torch hub's) only: no network.

The classifier is re-initialised for the data's classes when its shape differs; the first convolution is adapted to
the data's channels (timm's `adapt_input_conv`: summed to 1 channel, repeated and scaled for more).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maasctl.errors import MaasctlError, UsageError, did_you_mean

log = logging.getLogger(__name__)
PREFIX = "timm/"
WHERE = "model.params.pretrained"


def _timm() -> Any:
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is in the train extra
        raise MaasctlError(
            "timm models need the timm package: pip install 'maasctl[train]' (or pip install timm)", exit_code=3
        ) from None
    return timm


def architecture(name: str) -> str:
    """'timm/resnet18' -> 'resnet18', checked against timm's registry ('did you mean' for a typo)."""
    arch = name[len(PREFIX) :]
    timm = _timm()
    if not timm.is_model(arch):
        known = timm.list_models()
        hint = did_you_mean(arch, known) or "; `python -c \"import timm; print(timm.list_models('res*'))\"` lists them"
        raise UsageError(f"model.name: timm has no architecture {arch!r}{hint}")
    return arch


def pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's default pretrained configuration of an architecture (input_size, mean, std, crop_pct, ...)."""
    cfg = _timm().models.get_pretrained_cfg(architecture(name))
    return cfg.to_dict() if cfg is not None else {}


def model_defaults(name: str) -> dict[str, Any]:
    """The data keys timm's pretrained configuration gives: image_size, mean, std, crop_fraction, interpolation."""
    cfg = pretrained_cfg(name)
    out: dict[str, Any] = {}
    if cfg.get("input_size"):
        out["image_size"] = list(cfg["input_size"][1:])
    for key, ours in (
        ("mean", "mean"),
        ("std", "std"),
        ("crop_pct", "crop_fraction"),
        ("interpolation", "interpolation"),
    ):
        if cfg.get(key) is not None:
            out[ours] = list(cfg[key]) if isinstance(cfg[key], tuple) else cfg[key]
    return out


def create(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    pretrained: str | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    model_args: dict[str, Any] | None = None,
) -> nn.Module:
    """timm.create_model(architecture, num_classes, in_chans, img_size where the family takes one), then the
    `pretrained` weights."""
    if len(input_shape) != 3:
        raise UsageError(f"model.name: {name} takes images (C,H,W), but this data has samples of {list(input_shape)}")
    c, h, w = input_shape
    timm, arch = _timm(), architecture(name)
    kwargs = {"num_classes": num_classes, "in_chans": c, "drop_rate": drop_rate, **(model_args or {})}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    try:  # transformers fix their position table to an image size; convolutional families take any size
        model = timm.create_model(arch, pretrained=False, img_size=(h, w), **kwargs)
    except TypeError:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    if pretrained is not None:
        load_weights(model, pretrained, name)
    return model


def read_state_dict(spec: str, name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The weights `pretrained` names, and where they came from (for messages)."""
    if spec == "hub" or spec.startswith("hub:"):
        file = _hub_file(name, spec.partition(":")[2] or None)
    elif spec.startswith("run:"):
        file = _run_checkpoint(spec[4:])
    else:
        file = Path(spec).expanduser()
        if file.is_dir() and (file / "checkpoints" / "best.pt").is_file():
            file = file / "checkpoints" / "best.pt"
        if not file.is_file():
            raise UsageError(
                f"{WHERE}: there is no file at {file}. `pretrained` takes a local .safetensors or PyTorch weights file, "
                f"run:<maasctl run>, or hub[:<tag>] (timm's weights from the local Hugging Face cache); weights are "
                "never downloaded."
            )
    return _load_file(file, name), str(file)


def _load_file(file: Path, name: str) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(file), device="cpu")
        else:
            loaded = torch.load(file, map_location="cpu", weights_only=True)  # never run pickled code
    except Exception as exc:  # truncated, a pickle needing code, not a weights file at all
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UsageError(f"{WHERE}: {file} cannot be read as weights for {name} ({reason}).") from None
    for candidate in (loaded, *(loaded.get(k) for k in ("model", "state_dict") if isinstance(loaded, dict))):
        if isinstance(candidate, dict) and candidate and all(torch.is_tensor(v) for v in candidate.values()):
            state = dict(candidate)
            for prefix in ("module.", "_orig_mod."):
                if all(k.startswith(prefix) for k in state):
                    state = {k.removeprefix(prefix): v for k, v in state.items()}
            return state
    raise UsageError(f"{WHERE}: {file} holds no state_dict (a mapping of parameter names to tensors) for {name}.")


def _run_checkpoint(run: str) -> Path:
    named = Path("artifacts") / "runs" / run  # a run name first: a data folder may share it
    folder = named if named.is_dir() else Path(run).expanduser()
    best = folder / "checkpoints" / "best.pt"
    if not best.is_file():
        raise UsageError(
            f"{WHERE}: run:{run} has no best checkpoint at {best}; name a run under artifacts/runs/ or a run folder"
        )
    return best


def _hub_file(name: str, tag: str | None) -> Path:
    """timm's published weights for `name`, found in the local caches only: never fetched (HF_HUB_OFFLINE is set for
    the lookup whatever the environment says)."""
    timm, arch = _timm(), architecture(name)
    cfg = timm.models.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    if cfg is None:
        raise UsageError(f"{WHERE}: timm knows no pretrained tag {tag!r} for {arch}")
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
        raise UsageError(
            f"{WHERE}: hub weights for {arch} ({cfg.hf_hub_id}) are not in the local Hugging Face cache "
            f"{constants.HF_HUB_CACHE}. On a machine with network: `huggingface-cli download {cfg.hf_hub_id} "
            f"model.safetensors` (then copy {constants.HF_HUB_CACHE} here, or set HF_HOME), or download the file "
            "yourself and give its path as model.params.pretrained."
        )
    if cfg.url:
        file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url.split("?")[0])
        if file.is_file():
            return file
        raise UsageError(
            f"{WHERE}: hub weights for {arch} are not in the torch hub cache: expected {file} (from {cfg.url}); "
            "put the file there, or give its path as model.params.pretrained."
        )
    raise UsageError(f"{WHERE}: timm publishes no weights for {arch}; give a local weights file instead")


def load_weights(model: nn.Module, spec: str, name: str) -> None:
    """Load `spec`'s weights: the classifier re-initialised when its shape differs, the first convolution adapted to
    the model's input channels; any other missing, extra or misshapen tensor is an error naming them."""
    from timm.models import adapt_input_conv

    state, source = read_state_dict(spec, name)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    own = model.state_dict()
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    first = cfg.get("first_conv")
    first_key = f"{first}.weight" if isinstance(first, str) else None
    if first_key in state and first_key in own and state[first_key].shape[1] != own[first_key].shape[1]:
        state[first_key] = adapt_input_conv(own[first_key].shape[1], state[first_key].float())
    _resample_position_table(model, state, own)
    head_keys = [k for k in own if any(k.startswith(h + ".") for h in heads)]
    if any(k not in state or state[k].shape != own[k].shape for k in head_keys):
        state = {k: v for k, v in state.items() if not any(k.startswith(h + ".") for h in heads)}
        log.info("pretrained %s: the classifier does not fit this data's classes; it stays freshly initialised", source)
    missing = [k for k in own if k not in state and k not in head_keys and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    misshapen = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or misshapen:
        some = lambda ks: ", ".join(ks[:3]) + (f", … {len(ks) - 3} more" if len(ks) > 3 else "")  # noqa: E731
        problems = [
            f"{len(ks)} {what} ({some(ks)})"
            for ks, what in (
                (misshapen, "tensors differ in shape"),
                (missing, "model tensors are not in the file"),
                (unexpected, "tensors in the file are not in the model"),
            )
            if ks
        ]
        raise UsageError(
            f"{WHERE}: {source} does not fit {name} as built for this data: {'; '.join(problems)}. The weights must "
            "come from the same architecture and settings; only the classifier and the input channels may differ."
        )
    model.load_state_dict({**own, **state}, strict=True)


def _resample_position_table(model: nn.Module, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    """Vision transformers trained at another image size: interpolate the position table to this size's patch grid
    (timm's resample_abs_pos_embed, as timm does when loading its own weights at another size)."""
    key = "pos_embed"
    if key not in state or key not in own or state[key].shape == own[key].shape:
        return
    from timm.layers import resample_abs_pos_embed

    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        return
    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    state[key] = resample_abs_pos_embed(state[key], new_size=list(grid), num_prefix_tokens=prefix)
