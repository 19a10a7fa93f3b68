"""What the inference-I/O layer passes around: sources, samples, problems, and the model's input."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from maasctl.errors import EXIT_USAGE, Unavailable


@dataclass(frozen=True)
class Source:
    """One thing to read: a file (`data` None), or bytes that came on stdin or in a request."""

    name: str
    kind: str  # image | npy | npz | json | csv | txt | jsonl | text (a --text literal, in `data`)
    data: bytes | None = None


@dataclass(frozen=True)
class Problem:
    """Why an input (or, with `input` None, the whole run) could not be predicted."""

    input: str | None
    message: str
    exit_code: int = EXIT_USAGE

    def to_json(self) -> dict[str, Any]:
        return {"input": self.input, "error": self.message}


@dataclass(frozen=True)
class Sample:
    name: str  # what the user sees: the path, or path[i] for the i-th item of a batch file
    source: str  # the file it came from (or <stdin>, <body>)
    item: int | None  # its index in a batch file; None when the file held one sample
    tensor: np.ndarray  # model-ready; for images the decoded uint8 pixels, normalised with their batch
    image: bool = False


@dataclass(frozen=True)
class ModelInput:
    """The model's input, as the manifest (local) or the server (remote) describes it: one tensor, or for subword
    text models the several the tokenizer's output fills (input_ids, attention_mask, token_type_ids)."""

    name: str
    shape: tuple[int, ...]  # batch axis first; -1 where any size goes
    dtype: np.dtype
    preprocessing: dict[str, Any] | None
    manifest: dict[str, Any]

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> ModelInput:
        inputs = manifest.get("inputs") or []
        spec = manifest.get("preprocessing") or {}
        if spec.get("kind") == "subword" and inputs:
            if "tokenizer_json" not in spec:
                raise Unavailable("the model's tokenizer is not loaded (load the model with maasctl.runtime)")
            return cls(inputs[0]["name"], (-1, -1), np.dtype(np.int64), spec, manifest)
        if len(inputs) != 1:
            raise Unavailable(f"predict needs a model with exactly one input; this one has {len(inputs)}")
        spec = inputs[0]
        dtype = numeric_dtype(spec["datatype"])
        if dtype is None:
            raise Unavailable(
                f"predict sends numeric tensors; the model's input {spec['name']!r} is {spec['datatype']}"
            )
        return cls(spec["name"], tuple(spec["shape"]), dtype, manifest.get("preprocessing"), manifest)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def kind(self) -> str | None:
        """image | tabular | text | subword, from the preprocessing; None for a model that takes tensors only."""
        return (self.preprocessing or {}).get("kind")

    def describe_shape(self) -> str:
        return "[" + ", ".join("any" if d < 0 else str(d) for d in self.sample_shape) + "]"

    def takes(self) -> str:
        """What to give this model, for error messages."""
        if self.kind == "image":
            return "the model takes images (or .npy/.npz/.json tensors)"
        if self.kind == "tabular":
            columns = ", ".join(self.preprocessing["columns"])  # type: ignore[index]
            return f"the model takes CSV rows with columns {columns} (or .npy/.npz/.json tensors)"
        if self.kind == "subword":
            return 'the model takes texts: .txt (one per line), .jsonl, --text, or JSON {"texts": [...]}'
        if self.kind == "text":
            return "the model takes texts: .txt (one per line), .jsonl, or --text (or .npy/.npz/.json token tensors)"
        return f"the model takes .npy/.npz/.json tensors of shape {self.describe_shape()}"


def numeric_dtype(datatype: str) -> np.dtype | None:
    """FP32 -> float32, INT64 -> int64, UINT8 -> uint8, BOOL -> bool; None for BYTES and unknown names.

    The naming rule of the Open Inference Protocol's numeric types (protocol.v2.DATATYPES lists them), applied
    here so that a local prediction does not import the protocol module and orjson (~13 ms of start-up).
    """
    try:
        dtype = np.dtype(datatype.lower().replace("fp", "float"))
    except TypeError:
        return None
    return dtype if dtype.kind in "biuf" else None


def recipe_data(manifest: dict[str, Any]) -> dict[str, Any]:
    """The `data` section of the recipe a model was trained with ({} when the manifest has none)."""
    recipe = manifest.get("recipe")
    return (recipe.get("data") or {}) if isinstance(recipe, dict) else {}
