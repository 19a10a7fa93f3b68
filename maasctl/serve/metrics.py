"""Prometheus metrics, named after Triton's so existing dashboards carry over (prometheus-client adds `_total` to
counters). Each DataPlane owns a registry of its own: several servers in one process never share counts."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# 100 µs .. 10 s: a CPU batch of digits takes well under a millisecond, a queued request on a busy GPU seconds.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
LABELS = ("model", "version")

# Why a request to a loaded model failed (the `reason` label of nv_inference_request_failure).
REJECTED = "REJECTED"  # the model's queue was full (503)
TIMEOUT = "TIMEOUT"  # --request-timeout-s passed before the result was ready (504)
BACKEND = "BACKEND"  # onnxruntime refused the input (400)
CANCELED = "CANCELED"  # the server stopped waiting (shutdown past the drain time)
OTHER = "OTHER"  # a malformed request (400) or an internal error (500)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.success = Counter("nv_inference_request_success", "Inference requests that succeeded", LABELS, registry=r)
        self.failure = Counter(
            "nv_inference_request_failure", "Inference requests that failed, by reason", (*LABELS, "reason"), registry=r
        )
        self.count = Counter("nv_inference_count", "Samples inferred (rows along the batch axis)", LABELS, registry=r)
        self.exec_count = Counter(
            "nv_inference_exec_count",
            "Model executions; nv_inference_count / this = average batch size",
            LABELS,
            registry=r,
        )
        self.pending = Gauge(
            "nv_inference_pending_request_count",
            "Requests queued for the model, not yet executing",
            LABELS,
            registry=r,
            multiprocess_mode="livesum",  # with --workers: the queues of all live workers
        )
        self.queue_seconds = Histogram(
            "maasctl_inference_queue_seconds",
            "Time a request waited in the model's queue",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "maasctl_inference_compute_seconds",
            "Time one model execution (one batch) took in onnxruntime",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "maasctl_inference_request_seconds",
            "Time a successful request took, from decoding to encoded reply",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "maasctl_model_info",
            "1 for each model being served, with its execution provider and batching",
            (*LABELS, "provider", "max_batch_size"),
            registry=r,
            multiprocess_mode="livemax",
        )
        self._info_labels: dict[tuple[str, str], tuple[str, ...]] = {}
        self._tallies: dict[tuple[str, str, str], Observations] = {}
        # With --workers the values live in the worker's file, read by whichever worker is scraped: none may wait.
        self._fold_every = 1 if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else FOLD_EVERY

    def request_tally(self, name: str, version: str) -> Observations:
        """The infer path's successful requests to one model version: append each one's seconds; the success counter
        and the request-seconds histogram get them (see `Observations`)."""
        return self._tally("request", name, version, self.request_seconds, self.success)

    def queue_tally(self, name: str, version: str) -> Observations:
        """Append each request's seconds in the model version's queue; the queue-seconds histogram gets them."""
        return self._tally("queue", name, version, self.queue_seconds, None)

    def compute_tally(self, name: str, version: str) -> Observations:
        """Append each model execution's seconds; the compute-seconds histogram and the execution counter get them."""
        return self._tally("compute", name, version, self.compute_seconds, self.exec_count)

    def _tally(self, kind: str, name: str, version: str, histogram: Histogram, counter: Counter | None) -> Observations:
        tally = self._tallies.get((kind, name, version))
        if tally is None:
            bound = counter.labels(name, version) if counter is not None else None
            tally = Observations(histogram.labels(name, version), bound, self._fold_every)
            self._tallies[(kind, name, version)] = tally  # never removed: counters stay after an unload
        return tally

    def fold(self) -> None:
        """Every tally's observations into its series (before a scrape)."""
        for tally in list(self._tallies.values()):
            tally.fold()

    def bind_pending(self, name: str, version: str, length: Callable[[], int]) -> Any:
        """Export `length()` as the version's pending-request gauge. In one process the gauge reads it at each scrape,
        so queueing costs nothing per request: returns None. With --workers (multiprocess mode) a gauge's value lives
        in the worker's file and no function is read across processes: returns the bound gauge, which the caller sets
        whenever the queue changes."""
        gauge = self.pending.labels(name, version)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return gauge
        gauge.set_function(length)
        return None

    def model_loaded(self, name: str, version: int, provider: str, max_batch_size: int) -> None:
        labels = (name, str(version))
        self._info_labels[labels] = (*labels, provider, str(max_batch_size))
        self.model_info.labels(*self._info_labels[labels]).set(1)
        # Zero series from the start, so rate() and dashboards see every model before its first request.
        self.success.labels(*labels)
        self.count.labels(*labels)
        self.exec_count.labels(*labels)
        self.pending.labels(*labels).set(0)

    def model_unloaded(self, name: str, version: int) -> None:
        """Drop the version's info and queue gauges; its counters stay, so totals never go backwards."""
        info = self._info_labels.pop((name, str(version)), None)
        if info is not None:
            self.model_info.labels(*info).set(0)  # with --workers the value stays in the worker's file: make it 0
            self.model_info.remove(*info)
        with contextlib.suppress(KeyError):
            self.pending.labels(name, str(version)).set(0)
            self.pending.remove(name, str(version))

    def watch_readiness(self, source: Callable[[], dict[str, bool]]) -> None:
        """Export `maasctl_model_ready{model}` from `source` (model name -> has a version serving), read at each
        scrape, so the gauge cannot lag the state /v2/health/ready reports."""
        self.registry.register(_Readiness(source))

    def watch_drift(self, source: Callable[[], list[Any]]) -> None:
        """Export the drift gauges of the DriftMonitors (maasctl/drift.py) `source` returns, computed at each scrape
        from their windows. Models without training statistics have no monitor, so no drift series."""
        self.registry.register(_Drift(source))

    def render(self) -> bytes:
        self.fold()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # --workers: every worker's samples, summed
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


FOLD_EVERY = 256  # observations a tally keeps before it folds them (and before every scrape)


class Observations(list):
    """Observations of one histogram series (and a count of them for a counter series), kept as a plain list of
    floats and folded into the prometheus-client series every `every` observations and before each scrape (`Metrics.
    render`). On the infer path a request made three locked updates of prometheus-client's values (the success
    counter, the request-seconds histogram's bucket and sum, the queue-seconds histogram's) and a bucket search; now
    it appends to a list (`add`: an append and a length check). The fold finds the buckets
    for all of them at once and updates each touched bucket, the sum and the counter once, so a scrape reads the same
    counts, buckets and (up to float rounding) sum as `observe` per request would leave. Event-loop only, like the
    requests that append. With --workers (multiprocess mode) `every` is 1: another worker may be the one scraped."""

    __slots__ = ("bounds", "counter", "every", "histogram")

    def __init__(self, histogram: Any, counter: Any | None = None, every: int = FOLD_EVERY) -> None:
        super().__init__()
        self.histogram, self.counter, self.every = histogram, counter, every
        self.bounds = np.array(histogram._upper_bounds if hasattr(histogram, "_upper_bounds") else [np.inf])

    def add(self, value: float) -> None:
        """One observation; folded with the others once `every` are waiting."""
        self.append(value)
        if len(self) >= self.every:
            self.fold()

    def add_all(self, values: list[float]) -> None:
        """Several observations at once (a batch's queue times)."""
        self.extend(values)
        if len(self) >= self.every:
            self.fold()

    def fold(self) -> None:
        n = len(self)
        if not n:
            return
        values = self[:n]
        del self[:n]  # what is appended meanwhile (another thread) stays for the next fold
        if self.counter is not None:
            self.counter.inc(n)
        buckets = getattr(self.histogram, "_buckets", None)
        if buckets is None or len(buckets) != len(self.bounds):  # prometheus-client's internals differ: plain observe
            for value in values:
                self.histogram.observe(value)
            return
        found = np.bincount(np.searchsorted(self.bounds, values), minlength=len(self.bounds))  # as bisect_left
        for index in np.flatnonzero(found).tolist():
            buckets[index].inc(int(found[index]))
        self.histogram._sum.inc(sum(values))


class _Readiness(Collector):
    def __init__(self, source: Callable[[], dict[str, bool]]) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "maasctl_model_ready",
            "1 while the model has a version serving; 0 while it should but has none (its load failed)",
            labels=["model"],
        )
        for name, ready in sorted(self.source().items()):
            family.add_metric([name], 1.0 if ready else 0.0)
        yield family


class _Drift(Collector):
    def __init__(self, source: Callable[[], list[Any]]) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        reports = [monitor.report() for monitor in self.source()]
        if not reports:
            return
        labels, per_value = ["model", "version"], ["model", "version", "feature"]
        samples = GaugeMetricFamily(
            "maasctl_drift_window_samples", "Samples in the model's drift window (alert only past 500)", labels=labels
        )
        value_psi = GaugeMetricFamily(
            "maasctl_drift_psi",
            "Population stability index of a monitored input value (feature, channel mean, text length or unknown-"
            "token rate) in the window against the training statistics",
            labels=per_value,
        )
        shift = GaugeMetricFamily(
            "maasctl_drift_mean_shift",
            "Window mean of a monitored input value minus its training mean, in training standard deviations",
            labels=per_value,
        )
        prediction = GaugeMetricFamily(
            "maasctl_drift_prediction_psi",
            "Population stability index of the predicted classes in the window against those on the validation split",
            labels=labels,
        )
        for report in reports:
            key = [report["model"], str(report["version"])]
            samples.add_metric(key, report["samples"])
            for value in report["values"]:
                value_psi.add_metric([*key, value["name"]], value["psi"])
                shift.add_metric([*key, value["name"]], value["mean_shift"])
            if report["prediction_psi"] is not None:
                prediction.add_metric(key, report["prediction_psi"])
        yield from (samples, value_psi, shift, prediction)
