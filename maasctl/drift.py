"""Input and prediction drift, from the statistics export records in the manifest (numpy only, no torch).

Export summarises each reference sample as a few *monitored values*, suited to the input kind:

| input kind | monitored values (one per sample) |
|---|---|
| `features` (tabular) | each standardized column |
| `image` | each channel's mean over the image |
| `sequence` | each feature's mean over time |
| `tokens` (text) | the length in tokens, and the rate of unknown tokens |

and records, per value, `BINS` quantile bins (edges and reference counts), the mean and the standard deviation;
for images also each channel's pixel mean and standard deviation; and the counts of the classes the filed model
predicts on the validation split. The server keeps the last `WINDOW` samples per model version and computes, from
the same bins, the population stability index (PSI) of each value, its mean shift in reference standard deviations,
and the PSI of the predicted classes.

PSI = sum over bins of (a - e) ln(a / e), the symmetric Kullback-Leibler divergence of the window's bin shares `a`
from the reference's `e` (both smoothed by half a count per bin, so an empty bin is finite). With no drift, n * PSI
is about chi-squared with (bins - 1) degrees of freedom: PSI averages (BINS - 1) / n, 0.018 at n = 500, and the
largest of 100 values stays under 0.07 there in 99% of windows. A reference of m samples adds its own noise: the
average becomes (BINS - 1) (1/n + 1/m), which matters for small validation splits (text, predicted classes). So
`PSI_THRESHOLD` 0.2 (the usual "significant shift") is meant only once the window holds `MIN_SAMPLES` 500 samples:
the alert rules require both.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from maasctl.preprocess import PAD, UNK

log = logging.getLogger("maasctl.serve")

STATS_FORMAT = 1
BINS = 10
WINDOW = 1000  # samples kept per served model version
MIN_SAMPLES = 500  # below this the window's PSI is too noisy to alert on (see the module docstring)
PSI_THRESHOLD = 0.2
SHIFT_THRESHOLD = 1.0  # |mean shift| in reference standard deviations that `maasctl monitor` flags
MAX_REFERENCE = 20_000  # reference samples summarised at export (an evenly spaced subset beyond)
SMOOTHING = 0.5  # counts added to every bin before taking shares


def monitored_values(kind: str, x: np.ndarray) -> np.ndarray:
    """(N, ...) model inputs -> (N, K) float64 monitored values (see the module docstring)."""
    n = x.shape[0]
    if kind == "tokens":
        length = (x != PAD).sum(axis=1)
        unknown = (x == UNK).sum(axis=1) / np.maximum(length, 1)
        return np.stack([length, unknown], axis=1).astype(np.float64)
    if kind == "image":
        return x.reshape(n, x.shape[1], -1).mean(axis=2, dtype=np.float64)
    if kind == "sequence":
        return x.reshape(n, x.shape[1], -1).mean(axis=1, dtype=np.float64)
    return x.reshape(n, -1).astype(np.float64)


def value_names(kind: str, count: int, preprocessing: dict[str, Any]) -> list[str]:
    if kind == "tokens":
        return ["length", "unknown_rate"]
    if kind == "image":
        return [f"channel {i}" for i in range(count)]
    # A table's encoded positions (`age`, `age:missing`, `island=Dream`), or its plain columns (older manifests)
    for names in (preprocessing.get("inputs") or [], preprocessing.get("columns") or []):
        if len(names) == count:
            return list(names)
    return [f"feature {i}" for i in range(count)]


def reference_statistics(
    kind: str,
    reference: np.ndarray,
    preprocessing: dict[str, Any],
    predicted: np.ndarray,
    num_classes: int,
    *,
    reference_split: str,
    input_name: str = "input",
    output_name: str = "logits",
) -> dict[str, Any]:
    """The manifest's `drift` entry: `reference` holds model-ready inputs of the reference split, `predicted` the
    filed model's class indices on the validation split."""
    if len(reference) > MAX_REFERENCE:
        reference = reference[np.linspace(0, len(reference) - 1, MAX_REFERENCE).astype(int)]
    values = monitored_values(kind, reference)
    edges = np.quantile(values, np.arange(1, BINS) / BINS, axis=0).T  # (K, BINS - 1)
    counts = bin_counts(values, edges)
    names = value_names(kind, values.shape[1], preprocessing)
    stats: dict[str, Any] = {
        "format": STATS_FORMAT,
        "input_kind": kind,
        "input": input_name,
        "reference_split": reference_split,
        "samples": len(values),
        "values": [
            {
                "name": name,
                "edges": [float(e) for e in edges[k]],
                "counts": [int(c) for c in counts[k]],
                "mean": float(values[:, k].mean()),
                "std": float(values[:, k].std()),
            }
            for k, name in enumerate(names)
        ],
        "predictions": {
            "output": output_name,
            "split": "validation",
            "counts": [int(c) for c in np.bincount(predicted, minlength=num_classes)],
        },
    }
    if kind == "image":
        pixels = reference.transpose(1, 0, 2, 3).reshape(reference.shape[1], -1)
        stats["channel_mean"] = [float(v) for v in pixels.mean(axis=1, dtype=np.float64)]
        stats["channel_std"] = [float(v) for v in pixels.std(axis=1, dtype=np.float64)]
    return stats


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(N, K) values, (K, E) ascending edges -> (K, E + 1) counts; bin b holds edges[b - 1] < v <= edges[b], so
    values tied at an edge (a constant 0 unknown-token rate) all fall in the lowest bin they reach."""
    k, e = edges.shape
    bins = (values[:, :, None] > edges[None, :, :]).sum(axis=2)  # (N, K) in 0..E
    flat = bins + np.arange(k) * (e + 1)
    return np.bincount(flat.ravel(), minlength=k * (e + 1)).reshape(k, e + 1)


def psi(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Population stability index of `actual` counts against `expected` counts, along the last axis."""
    e = np.asarray(expected, dtype=np.float64) + SMOOTHING
    a = np.asarray(actual, dtype=np.float64) + SMOOTHING
    e /= e.sum(axis=-1, keepdims=True)
    a /= a.sum(axis=-1, keepdims=True)
    return ((a - e) * np.log(a / e)).sum(axis=-1)


FOLD_ROWS = 256  # rows of observed batches held before they are summarised into the window (and at each report)
FOLD_BYTES = 64 << 10  # ... or bytes of their monitored input, whichever first (a larger batch: summarised at once)


def _owns(x: np.ndarray | None) -> bool:
    """Whether holding `x` holds no more memory than its own: it owns its data, or is a reshaped view of an array of
    the same size that does (a decoded JSON tensor)."""
    if x is None or x.flags.owndata:
        return True
    base = x.base
    return isinstance(base, np.ndarray) and base.flags.owndata and base.nbytes == x.nbytes


class DriftMonitor:
    """The rolling window of one served model version: `observe` each executed batch (any thread), `report` at
    will (any thread)."""

    def __init__(self, name: str, version: int, stats: dict[str, Any], window: int = WINDOW) -> None:
        self.name, self.version, self.stats, self.window = name, version, stats, window
        self.kind, self.input = stats["input_kind"], stats["input"]
        self.output = stats["predictions"]["output"]
        self.names = [v["name"] for v in stats["values"]]
        self.edges = np.array([v["edges"] for v in stats["values"]], dtype=np.float64)
        self.expected = np.array([v["counts"] for v in stats["values"]], dtype=np.float64)
        self.mean = np.array([v["mean"] for v in stats["values"]], dtype=np.float64)
        self.std = np.array([v["std"] for v in stats["values"]], dtype=np.float64)
        self.expected_classes = np.array(stats["predictions"]["counts"], dtype=np.float64)
        self._values = np.zeros((window, len(self.names)), dtype=np.float64)
        self._classes = np.full(window, -1, dtype=np.int64)  # -1: the request did not ask for the output
        self._next, self._seen = 0, 0
        self._lock = threading.Lock()
        self._failed = False
        self._held: list[tuple[np.ndarray | None, np.ndarray | None]] = []  # batches not yet in the window
        self._held_rows = self._held_bytes = 0

    @classmethod
    def for_model(cls, name: str, version: int, manifest: dict[str, Any]) -> DriftMonitor | None:
        stats = manifest.get("drift")
        if not isinstance(stats, dict) or stats.get("format") != STATS_FORMAT:
            log.info(
                "model %s version %d: the manifest has no training statistics (exported before drift monitoring): "
                "no drift gauges; export it again to monitor drift",
                name,
                version,
            )
            return None
        return cls(name, version, stats)

    def observe(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Add a batch. Never fails the request it comes with: a batch it cannot read turns monitoring off for
        this version, with one log line.

        The batch is held (a reference, no copy) and summarised with the batches after it, `FOLD_ROWS` rows or
        `FOLD_BYTES` bytes of inputs at a time, and before each `report`: per batch of a few digits rows the summary
        (monitored values, predicted classes, the ring's update) cost more than the rest of the batch's Python. A
        batch whose input is a view into something larger (a binary request's body) is summarised at once, so no
        body outlives its request."""
        if self._failed:
            return
        x, logits = inputs.get(self.input), outputs.get(self.output)
        with self._lock:
            self._held.append((x, logits))
            self._held_rows += len(x) if x is not None and x.ndim else 1
            self._held_bytes += x.nbytes if x is not None else 0
            if self._held_rows >= FOLD_ROWS or self._held_bytes >= FOLD_BYTES or not _owns(x):
                self._fold()

    def _fold(self) -> None:
        """The held batches into the window (with the lock held)."""
        held, self._held, self._held_rows, self._held_bytes = self._held, [], 0, 0
        if not held or self._failed:
            return
        try:
            xs = [x for x, _ in held]
            if any(x is None for x in xs):
                raise KeyError(f"no input {self.input!r}")
            if len(xs) > 1 and all(x.shape[1:] == xs[0].shape[1:] for x in xs):  # one summary for all of them
                values = monitored_values(self.kind, np.concatenate(xs))
            else:
                values = np.concatenate([monitored_values(self.kind, x) for x in xs])
            ys = [y for _, y in held]
            if all(y is not None for y in ys) and all(y.shape[1:] == ys[0].shape[1:] for y in ys):
                classes = (ys[0] if len(ys) == 1 else np.concatenate(ys)).argmax(axis=1)
            else:
                classes = np.concatenate([np.full(len(x), -1) if y is None else y.argmax(axis=1) for x, y in held])
            if len(classes) != len(values):
                raise ValueError(f"{len(values)} inputs but {len(classes)} predictions")
            self._append(values[-self.window :], classes[-self.window :])
        except Exception as exc:  # shapes no one expected: stop watching rather than fail inference
            self._failed = True
            log.warning("model %s version %d: drift monitoring stopped: %s", self.name, self.version, exc)

    def _append(self, values: np.ndarray, classes: np.ndarray) -> None:
        """Into the ring (with the lock held)."""
        n = len(values)
        rows = (self._next + np.arange(n)) % self.window
        self._values[rows] = values
        self._classes[rows] = classes
        self._next = (self._next + n) % self.window
        self._seen += n

    def report(self) -> dict[str, Any]:
        """The window's drift: sample count, each monitored value's PSI and mean shift, the predictions' PSI."""
        with self._lock:
            self._fold()
            n = min(self._seen, self.window)
            values, classes = self._values[:n].copy(), self._classes[:n].copy()
        report: dict[str, Any] = {"model": self.name, "version": self.version, "samples": n, "window": self.window}
        if n == 0:
            return {**report, "values": [], "prediction_psi": None}
        value_psi = psi(self.expected, bin_counts(values, self.edges))
        shift = (values.mean(axis=0) - self.mean) / np.maximum(self.std, 1e-6)
        classes = classes[classes >= 0]
        counts = np.bincount(classes, minlength=len(self.expected_classes))[: len(self.expected_classes)]
        report["values"] = [
            {"name": name, "psi": float(p), "mean_shift": float(s)} for name, p, s in zip(self.names, value_psi, shift)
        ]
        report["prediction_psi"] = float(psi(self.expected_classes, counts)) if len(classes) else None
        return report
