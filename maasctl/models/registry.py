"""A small registry of model factories, keyed by name (timm-style).

A factory takes what the data decides — `input_shape` (per sample, no batch axis), `num_classes`, and for
token inputs `vocab_size` — plus the recipe's `model.params` as keyword arguments. Each factory declares which
input kinds it accepts, so a model and a dataset that do not fit get a clear error, not a shape mismatch.

Input kinds: "image" float32 (C,H,W) · "features" float32 (F,) · "sequence" float32 (T,F) · "tokens" int64 (T,)
· "subword" int64 (3,T): token ids, token type ids, attention mask (pretrained encoders, maasctl/models/hf.py)
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from maasctl.errors import UsageError, did_you_mean

INPUT_KINDS = ("image", "features", "sequence", "tokens", "subword")
DATA_ARGS = ("input_shape", "num_classes", "vocab_size", "config")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., Any]
    inputs: tuple[str, ...]

    @property
    def description(self) -> str:
        return (inspect.getdoc(self.factory) or "").splitlines()[0] if inspect.getdoc(self.factory) else ""

    @property
    def params(self) -> dict[str, Any]:
        """The factory's tunable keyword arguments and their defaults (what `model.params` may set)."""
        return {
            k: p.default
            for k, p in inspect.signature(self.factory).parameters.items()
            if k not in DATA_ARGS and p.default is not inspect.Parameter.empty
        }


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(fn: Callable[..., Any] | None = None, *, inputs: tuple[str, ...] = ("image",)):
    """Decorator: `@register_model` or `@register_model(inputs=("features",))`."""
    unknown = set(inputs) - set(INPUT_KINDS)
    if unknown:
        raise ValueError(f"unknown input kinds {unknown}")

    def add(f: Callable[..., Any]) -> Callable[..., Any]:
        if f.__name__ in _REGISTRY:
            raise ValueError(f"model {f.__name__!r} is registered twice")
        _REGISTRY[f.__name__] = ModelEntry(f.__name__, f, tuple(inputs))
        return f

    return add(fn) if fn is not None else add


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


TIMM_PREFIX = "timm/"  # any timm architecture: model.name timm/<name> (maasctl/models/timm_models.py)


def get_model_entry(name: str) -> ModelEntry:
    if name.startswith(TIMM_PREFIX):
        import functools

        from maasctl.models import timm_models

        timm_models.architecture(name)  # an unknown architecture fails here, with a suggestion
        return ModelEntry(name, functools.partial(timm_models.create, name), ("image",))
    entry = _REGISTRY.get(name)
    if entry is None:
        hint = did_you_mean(name, _REGISTRY) or f"; known models: {', '.join(list_models())}, or timm/<architecture>"
        raise UsageError(f"model.name: unknown model {name!r}{hint}")
    return entry


def create_model(
    name: str,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    input_kind: str = "image",
    vocab_size: int | None = None,
    config: dict[str, Any] | None = None,
    **params: Any,
):
    entry = get_model_entry(name)
    if input_kind not in entry.inputs:
        fitting = [n for n, e in sorted(_REGISTRY.items()) if input_kind in e.inputs]
        raise UsageError(
            f"model.name: {name} takes {' or '.join(entry.inputs)} inputs, but this data gives {input_kind} "
            f"of shape {list(input_shape)}; models for {input_kind}: {', '.join(fitting)}"
        )
    pruned = params.pop("pruned", None)  # any model: the layers `maasctl prune` narrowed (maasctl/models/pruned.py)
    unknown = [k for k in params if k not in entry.params]
    if unknown:
        raise UsageError(
            f"model.params: {name} does not take {', '.join(map(repr, unknown))}; it takes: {', '.join(entry.params) or 'nothing'}"
        )
    data_args: dict[str, Any] = {"input_shape": tuple(input_shape), "num_classes": num_classes}
    if input_kind in ("tokens", "subword"):
        data_args["vocab_size"] = vocab_size
    if config is not None:  # a pretrained encoder's architecture, saved with its checkpoint (models/hf.py)
        data_args["config"] = config
    if pruned is not None:
        return _pruned(entry, data_args, params, pruned)
    try:
        return entry.factory(**data_args, **params)
    except UsageError as exc:  # weights that do not fit: say so when they come from a pruned run
        from maasctl.models.pruned import pretrained_hint

        hint = pretrained_hint(params.get("pretrained"))
        if hint:
            raise UsageError(f"{exc} {hint}") from None
        raise


def _pruned(entry: ModelEntry, data_args: dict[str, Any], params: dict[str, Any], pruned: Any):
    """The factory's model cut down to the pruned shapes; `pretrained` weights (a pruned run's checkpoint) load
    after the cut, since they have the pruned shapes."""
    from maasctl.models import pruned as pruning

    pretrained = params.pop("pretrained", None)
    model = pruning.apply(entry.factory(**data_args, **params), pruned)
    if pretrained is not None:
        pruning.load_pretrained(model, str(pretrained), entry.name)
    return model


def build_model_from_meta(meta: dict[str, Any], *, weights_follow: bool = False):
    """The architecture a checkpoint's weights belong to, from the metadata saved beside them (training writes it,
    export and evaluation read it). `weights_follow`: a checkpoint's weights are loaded next, so a `pretrained`
    file is not read (it may be gone)."""
    params = dict(meta["model_params"])
    if weights_follow and "pretrained" in params:
        params["pretrained"] = None
    return create_model(
        meta["model_name"],
        input_shape=tuple(meta["input_shape"]),
        num_classes=meta["num_classes"],
        input_kind=meta.get("input_kind", "image"),
        vocab_size=meta.get("vocab_size"),
        config=meta.get("hf_config") if weights_follow else None,
        **params,
    )
