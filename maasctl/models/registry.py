"""A small registry of model factories, keyed by name.

A factory takes the input shape and class count (both come from the data, never from the user) and the
recipe's `model.params` as keyword arguments.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Any, Callable

from maasctl.errors import UsageError

Factory = Callable[..., Any]
_REGISTRY: dict[str, Factory] = {}


def register_model(fn: Factory) -> Factory:
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def describe_model(name: str) -> str:
    return inspect.getdoc(_REGISTRY[name]) or ""


def create_model(name: str, *, input_shape: tuple[int, ...], num_classes: int, **params: Any):
    factory = _REGISTRY.get(name)
    if factory is None:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known models: {', '.join(list_models())}"
        raise UsageError(f"model.name: unknown model {name!r}{hint}")
    accepted = inspect.signature(factory).parameters
    unknown = [k for k in params if k not in accepted or k in ("input_shape", "num_classes")]
    if unknown:
        valid = [k for k in accepted if k not in ("input_shape", "num_classes")]
        raise UsageError(
            f"model.params: {name} does not take {', '.join(map(repr, unknown))}; it takes: {', '.join(valid)}"
        )
    return factory(input_shape=input_shape, num_classes=num_classes, **params)
