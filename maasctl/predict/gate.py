"""Expected labels and the accuracy gate: `--expect`, `--labels-file`, `--labels-from-folders`,
`--labels-from-column`, `--min-accuracy`; for regression models, expected values and `--max-abs-error`,
`--max-mae`.

Without `--min-accuracy` every labelled prediction must match; with it, accuracy must reach it (and single
mismatches do not fail the run on their own). A regression gate fails when any |error| exceeds
`--max-abs-error`, or when the mean |error| over the labelled inputs exceeds `--max-mae` (either or both).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from maasctl.errors import UsageError
from maasctl.inputs.decode import read_csv_records, read_jsonl_records
from maasctl.inputs.kinds import kind_of
from maasctl.inputs.outputs import Prediction
from maasctl.inputs.types import Source, recipe_data
from maasctl.predict.inputs import STDIN_NAME, TEXT_NAME

_ITEM = re.compile(r"^(.*)\[(\d+)\]$")  # `batch.npy[3]`: the 4th sample of a batch file
_HEADER_INPUT = {"input", "path", "file", "filename", "image"}
_HEADER_LABEL = {"label", "expected", "class", "target"}


class Expectations(Protocol):
    def lookup(self, source: str, item: int | None) -> str | None: ...


@dataclass(frozen=True)
class SameLabel:
    """--expect LABEL: every input should be LABEL."""

    label: str

    def lookup(self, source: str, item: int | None) -> str | None:
        return self.label


class FolderLabels:
    """--labels-from-folders: `cats/1.png` should be `cats` (the folder holding the file)."""

    def lookup(self, source: str, item: int | None) -> str | None:
        if source in (STDIN_NAME, TEXT_NAME):
            return None
        return os.path.basename(os.path.dirname(os.path.abspath(source))) or None


class ColumnLabels:
    """--labels-from-column: a CSV or JSONL input's own label column (the recipe's `data.label_column`)."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        column = recipe_data(manifest).get("label_column")
        if not column:
            raise UsageError("--labels-from-column: the model's recipe names no data.label_column")
        self.column = str(column)
        self._files: dict[str, list[Any]] = {}

    def lookup(self, source: str, item: int | None) -> str | None:
        kind = kind_of(source)
        if item is None or kind not in ("csv", "jsonl") or source in (STDIN_NAME, TEXT_NAME):
            return None
        if source not in self._files:
            src = Source(source, kind)
            self._files[source] = read_csv_records(src)[1] if kind == "csv" else read_jsonl_records(src)
        records = self._files[source]
        record = records[item] if item < len(records) else None
        value = record.get(self.column) if isinstance(record, dict) else None
        return None if value is None or str(value).strip() == "" else str(value).strip()


class LabelsFile:
    """--labels-file FILE: CSV rows `input,label` (a header row is optional) or a JSON object {input: label}.

    Paths are taken relative to the current folder, or else to FILE's folder. A batch file's samples are
    `batch.npy[i]`, or give `batch.npy` one label for all of them or a JSON list with one label each.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        entries = _read_entries(self.path)
        if not entries:
            raise UsageError(f"{self.path}: no labels in it")
        self._by_key: dict[tuple[str, int | None], tuple[str, Any]] = {}  # (abs path, item) -> (key as written, label)
        for base in (os.getcwd(), os.path.abspath(self.path.parent)):  # the current folder wins where both match
            for key, label in entries:
                m = _ITEM.match(key)
                path, item = (m.group(1), int(m.group(2))) if m else (key, None)
                self._by_key.setdefault((os.path.normpath(os.path.join(base, path)), item), (key, label))
        self.keys = [key for key, _ in entries]
        self.used: set[str] = set()

    def lookup(self, source: str, item: int | None) -> str | None:
        path = os.path.abspath(source)
        found = self._by_key.get((path, item))
        if found is None and item is not None:
            found = self._by_key.get((path, None))
        if found is None:
            return None
        key, label = found
        self.used.add(key)
        if isinstance(label, list):  # one label per sample of a batch file
            if item is None:
                return label[0] if len(label) == 1 else None
            return label[item] if item < len(label) else None
        return label


def _read_entries(path: Path) -> list[tuple[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"--labels-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--labels-file {path}: cannot read it ({exc})") from None
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("{", "["):
        return _json_entries(path, text)
    return _csv_entries(path, text)


def _json_entries(path: Path, text: str) -> list[tuple[str, Any]]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--labels-file {path}: not valid JSON ({exc})") from None
    if isinstance(doc, list):  # [{"input": ..., "label": ...}, ...]
        if not all(isinstance(e, dict) and "input" in e and "label" in e for e in doc):
            raise UsageError(f'--labels-file {path}: a JSON list must hold {{"input": PATH, "label": LABEL}} objects')
        doc = {str(e["input"]): e["label"] for e in doc}
    if not isinstance(doc, dict):
        raise UsageError(f"--labels-file {path}: give a JSON object mapping input path to expected label")
    return [(str(k), _label(path, k, v)) for k, v in doc.items()]


def _label(path: Path, key: str, value: Any) -> Any:
    if isinstance(value, list):
        return [_label(path, key, v) for v in value]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UsageError(f"--labels-file {path}: the label of {key!r} must be a string or an integer, got {value!r}")
    return str(value)


def _csv_entries(path: Path, text: str) -> list[tuple[str, Any]]:
    rows = [(n, r) for n, r in enumerate(csv.reader(io.StringIO(text)), 1) if any(c.strip() for c in r)]
    if (
        rows
        and rows[0][1][0].strip().lower() in _HEADER_INPUT
        and len(rows[0][1]) > 1
        and rows[0][1][1].strip().lower() in _HEADER_LABEL
    ):
        rows = rows[1:]
    entries = []
    for n, row in rows:
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise UsageError(f"--labels-file {path} line {n}: expected two columns, input,label; got {','.join(row)!r}")
        entries.append((row[0].strip(), row[1].strip()))
    return entries


@dataclass
class GateResult:
    labelled: int = 0  # predictions with an expected label
    correct: int = 0
    min_accuracy: float | None = None
    unlabelled: list[str] = field(default_factory=list)  # inputs the labels file does not name
    unknown_labels: list[str] = field(default_factory=list)  # expected labels the model does not have

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def passed(self) -> bool:
        if self.min_accuracy is not None:
            return self.accuracy is not None and self.accuracy >= self.min_accuracy
        return self.correct == self.labelled

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "correct": self.correct,
            "labelled": self.labelled,
            "mismatches": self.labelled - self.correct,
            "unlabelled": len(self.unlabelled),
            "min_accuracy": self.min_accuracy,
            "passed": self.passed,
        }


def apply_expectations(
    predictions: list[Prediction], expectations: Expectations, model_labels: list[str], min_accuracy: float | None
) -> GateResult:
    """Set each prediction's `expected` label and count how many are right."""
    result = GateResult(min_accuracy=min_accuracy)
    known = set(model_labels)
    for p in predictions:
        p.expected = expectations.lookup(p.source, p.item)
        if p.expected is None:
            result.unlabelled.append(p.input)
            continue
        result.labelled += 1
        result.correct += p.label == p.expected
        if known and p.expected not in known and p.expected not in result.unknown_labels:
            result.unknown_labels.append(p.expected)
    return result


@dataclass
class ValueGateResult:
    """A regression model's gate: errors against expected values, in the target's units."""

    max_abs_error: float | None = None
    max_mae: float | None = None
    errors: list[float] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)
    not_numbers: list[str] = field(default_factory=list)  # "input: 'x'" for expected values that are not numbers
    unknown_labels: list[str] = field(default_factory=list)  # (none: any number is a possible value)

    @property
    def labelled(self) -> int:
        return len(self.errors)

    @property
    def mae(self) -> float | None:
        return sum(abs(e) for e in self.errors) / len(self.errors) if self.errors else None

    @property
    def rmse(self) -> float | None:
        return (sum(e * e for e in self.errors) / len(self.errors)) ** 0.5 if self.errors else None

    @property
    def worst(self) -> float | None:
        return max(abs(e) for e in self.errors) if self.errors else None

    @property
    def mismatches(self) -> int:
        return sum(abs(e) > self.max_abs_error for e in self.errors) if self.max_abs_error is not None else 0

    @property
    def passed(self) -> bool:
        if not self.errors:
            return False
        return self.mismatches == 0 and (self.max_mae is None or self.mae <= self.max_mae)  # type: ignore[operator]

    def to_json(self) -> dict[str, Any]:
        return {
            "mae": self.mae,
            "rmse": self.rmse,
            "max_error": self.worst,
            "labelled": self.labelled,
            "mismatches": self.mismatches,
            "unlabelled": len(self.unlabelled),
            "max_abs_error": self.max_abs_error,
            "max_mae": self.max_mae,
            "passed": self.passed,
        }


def apply_value_expectations(
    predictions: list[Prediction], expectations: Expectations, max_abs_error: float | None, max_mae: float | None
) -> ValueGateResult:
    """Set each regression prediction's `expected` value and error; an expected value that is not a number is
    listed in `not_numbers` (an input error) and not counted."""
    result = ValueGateResult(max_abs_error=max_abs_error, max_mae=max_mae)
    for p in predictions:
        expected = expectations.lookup(p.source, p.item)
        if expected is None:
            result.unlabelled.append(p.input)
            continue
        try:
            number = float(expected)
        except ValueError:
            result.not_numbers.append(f"{p.input}: expected value {expected!r} is not a number")
            continue
        p.expected = str(expected)
        error = p.value - number  # type: ignore[operator]
        p.within = abs(error) <= max_abs_error if max_abs_error is not None else None
        result.errors.append(error)
    return result


def parse_tolerance(option: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{option} {text!r}: give a number in the target's units, such as 2.5") from None
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"{option} {text!r}: must be a finite number, 0 or more")
    return value


def parse_accuracy(text: str) -> float:
    """`0.95` or `95%`."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UsageError(
            f"--min-accuracy {text!r}: give a fraction such as 0.95, or a percentage such as 95%"
        ) from None
    if not 0 <= value <= 1:
        raise UsageError(f"--min-accuracy {text!r}: must lie between 0 and 1 (or 0% and 100%)")
    return value
