"""What a model answers, made readable: which output holds the scores, and scores -> labelled predictions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maasctl.inputs.types import Sample


@dataclass
class Prediction:
    input: str
    label: str
    probability: float | None
    index: int | None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    source: str = ""  # the file the input came from
    item: int | None = None  # its index in a batch file
    expected: str | None = None
    value: float | None = None  # regression: the predicted value, in the target's units (then label is its text)
    within: bool | None = None  # regression, gated with --max-abs-error: |value - expected| is within it

    @property
    def correct(self) -> bool | None:
        if self.value is not None:
            return None if self.expected is None else self.within
        return None if self.expected is None else self.label == self.expected

    @property
    def error(self) -> float | None:
        """regression: predicted - expected (None without a numeric expected value)."""
        try:
            return None if self.value is None or self.expected is None else self.value - float(self.expected)
        except ValueError:
            return None

    def to_json(self) -> dict[str, Any]:
        if self.value is not None:
            doc = {"input": self.input, "value": self.value}
            if self.expected is not None:
                doc.update(expected=self.expected, error=self.error, correct=self.correct)
            return doc
        doc: dict[str, Any] = {
            "input": self.input,
            "label": self.label,
            "probability": self.probability,
            "index": self.index,
            "top_k": [{"label": label, "probability": p} for label, p in self.top_k],
        }
        if self.expected is not None:
            doc["expected"] = self.expected
            doc["correct"] = self.correct
        return doc


def scores_output(manifest: dict[str, Any]) -> str:
    """The name of the output that holds the class scores: the manifest's first output (export writes `logits`
    there; a hand-filed model lists its outputs in the order it wants them read)."""
    outputs = manifest.get("outputs") or []
    if not outputs:
        raise ValueError("the manifest lists no outputs")
    return outputs[0]["name"]


def model_labels(manifest: dict[str, Any]) -> list[str]:
    """Class names by output index; an index with no name is shown as its number."""
    return [str(label) for label in manifest.get("labels") or []]


def label_batch(batch: list[Sample], logits: np.ndarray, labels: list[str], top_k: int) -> list[Prediction]:
    """Each sample's prediction from its row of `logits`: the label, its probability and the top k (softmax)."""
    probs = softmax(np.asarray(logits, dtype=np.float64))
    k = min(top_k, probs.shape[-1])
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]

    def label(i: int) -> str:
        return labels[i] if i < len(labels) else str(i)

    out = []
    for sample, p, best in zip(batch, probs, order.tolist()):
        top = [(label(i), float(p[i])) for i in best]
        out.append(Prediction(sample.name, top[0][0], top[0][1], best[0], top, sample.source, sample.item))
    return out


def is_regression(manifest: dict[str, Any]) -> bool:
    return manifest.get("task") == "regression"


def value_batch(batch: list[Sample], outputs: np.ndarray) -> list[Prediction]:
    """Each sample's value from its row of a regression model's output. The model's graph already turns its
    standardised output into the target's units with the manifest's `target` statistics (export puts
    value = z * std + mean into it), so what a client of /infer gets and what predict prints are the same numbers."""
    values = np.asarray(outputs, dtype=np.float64).reshape(len(batch), -1)[:, 0]
    return [
        Prediction(s.name, f"{v:.6g}", None, None, source=s.source, item=s.item, value=float(v))
        for s, v in zip(batch, values.tolist())
    ]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
