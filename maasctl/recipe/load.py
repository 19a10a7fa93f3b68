"""Read a recipe: YAML (safe_load only) + `--set key.path=value` overrides, validated by the schema.

Every problem is reported at once, each naming its key path, where it came from and, for a misspelt key
or choice, the closest valid one.
"""

from __future__ import annotations

import hashlib
import json
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from maasctl.errors import UsageError, did_you_mean
from maasctl.recipe.schema import DATA_SOURCES, DigitsData, Recipe

OVERRIDE_FORM = "key.path=value (for example train.epochs=5)"


class RecipeError(UsageError):
    """One or more problems in a recipe; the message lists them all."""


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """The recipe at `path` (or the default recipe when None) with `overrides` applied, validated."""
    source = str(path) if path is not None else "the default recipe"
    raw: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    overridden = _apply_overrides(raw, overrides or [])
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        data = raw.get("data")
        data_model = DATA_SOURCES.get(data.get("source", "digits") if isinstance(data, dict) else "digits", DigitsData)
        problems = [_describe(err, overridden, data_model) for err in exc.errors()]
        raise RecipeError(_format(source, problems)) from None


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML, keys in schema order."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def recipe_sha256(recipe: Recipe) -> str:
    """A stable hash of the resolved recipe, recorded in checkpoints and manifests."""
    canonical = json.dumps(recipe.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path}") from None
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _apply_overrides(raw: dict[str, Any], overrides: list[str]) -> set[tuple[str, ...]]:
    """Apply `key.path=value` overrides in place; returns the key paths they set."""
    problems, overridden = [], set()
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = tuple(key.strip().split("."))
        if not sep or not all(parts):
            problems.append(f"--set {item!r}: expected {OVERRIDE_FORM}")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text  # not YAML: keep it as the string the user typed
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"--set {item!r}: {'.'.join(parts[: depth + 1])} is a value, not a section")
                break
            node = child
        else:
            node[parts[-1]] = value
            overridden.add(parts)
    if problems:
        raise RecipeError(_format("--set", problems))
    return overridden


def _describe(err: dict[str, Any], overridden: set[tuple[str, ...]], data_model: type[BaseModel]) -> str:
    loc = _strip_tags(tuple(str(p) for p in err["loc"]))
    if err["type"] == "union_tag_invalid":  # e.g. data.source: cvs
        loc = loc + ("source",)
        tag = str(err["ctx"]["tag"])
        hint = did_you_mean(tag, list(DATA_SOURCES))
        message = f"unknown source {tag!r}" + (hint or f"; sources: {', '.join(DATA_SOURCES)}")
        origin = " (from --set)" if any(loc[: len(o)] == o or o[: len(loc)] == loc for o in overridden) else ""
        return f"{'.'.join(loc)}{origin}: {message}"
    key = ".".join(loc) or "(top level)"
    # An override and the failing key are related when either path is a prefix of the other.
    origin = " (from --set)" if any(loc[: len(o)] == o or o[: len(loc)] == loc for o in overridden) else ""
    if err["type"] == "extra_forbidden":
        valid = _fields_at(loc[:-1], data_model)
        hint = did_you_mean(loc[-1], valid)
        message = f"unknown key{hint}" + (f"; valid keys here: {', '.join(valid)}" if not hint else "")
    else:
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error" and isinstance(err.get("input"), str):
            message += did_you_mean(err["input"], _choices_at(loc, data_model))
        elif "input" in err and not isinstance(err["input"], (dict, list)):
            message += f" (got {err['input']!r})"
    return f"{key}{origin}: {message}"


def _strip_tags(loc: tuple[str, ...]) -> tuple[str, ...]:
    """pydantic puts the union tag in error paths (data.csv.path); users wrote data.path."""
    if len(loc) >= 2 and loc[0] == "data" and loc[1] in DATA_SOURCES:
        return (loc[0],) + loc[2:]
    return loc


def _model_at(loc: tuple[str, ...], data_model: type[BaseModel]) -> type[BaseModel] | None:
    """The schema section at a key path; `data` resolves to the section of the recipe's data source."""
    model: type[BaseModel] = Recipe
    for part in loc:
        if model is Recipe and part == "data":
            model = data_model
            continue
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _fields_at(loc: tuple[str, ...], data_model: type[BaseModel]) -> list[str]:
    model = _model_at(loc, data_model)
    return list(model.model_fields) if model else []


def _choices_at(loc: tuple[str, ...], data_model: type[BaseModel]) -> list[str]:
    model = _model_at(loc[:-1], data_model)
    field = model.model_fields.get(loc[-1]) if model else None
    if field is None or typing.get_origin(field.annotation) is not typing.Literal:
        return []
    return [str(c) for c in typing.get_args(field.annotation)]


def _format(source: str, problems: list[str]) -> str:
    noun = "problem" if len(problems) == 1 else "problems"
    lines = "\n".join(f"  - {p}" for p in problems)
    return f"invalid recipe {source} ({len(problems)} {noun}):\n{lines}"
