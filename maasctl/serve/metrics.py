"""Prometheus metrics, named after Triton's so existing dashboards carry over (prometheus-client adds `_total` to
counters). Each DataPlane owns a registry of its own: several servers in one process never share counts."""

from __future__ import annotations

import contextlib
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

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
        self._request_series: dict[tuple[str, str], tuple[Any, Any]] = {}

    def request_series(self, name: str, version: str) -> tuple[Any, Any]:
        """The success counter's `inc` and request-seconds histogram's `observe` of one model version, bound once
        (see `incrementer` and `observer`): `labels()` takes a lock and hashes the labels on every call, and these two
        are updated on every request. Counters are never removed, so a bound series stays valid after an unload."""
        series = self._request_series.get((name, version))
        if series is None:
            series = (
                incrementer(self.success.labels(name, version)),
                observer(self.request_seconds.labels(name, version)),
            )
            self._request_series[(name, version)] = series
        return series

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
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # --workers: every worker's samples, summed
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


def incrementer(counter: Any) -> Callable[[float], None]:
    """`counter.inc` for a bound series on the hot path: its value's own `inc`, without the checks `Counter.inc` makes
    on every call (a bound series is observable; the amounts here are never negative; no exemplars). Plain `inc`
    should prometheus-client's internals differ."""
    value = getattr(counter, "_value", None)
    return value.inc if callable(getattr(value, "inc", None)) else counter.inc


def observer(histogram: Any) -> Callable[[float], None]:
    """`histogram.observe` for a bound series on the hot path (two histograms per request): the bucket found by
    bisection instead of a walk through the bounds, without the per-call checks `observe` makes (a bound series is
    observable; maasctl sets no exemplars). Same buckets, same sum. Plain `observe` should prometheus-client's
    internals differ."""
    try:
        total, buckets, bounds = histogram._sum, histogram._buckets, list(histogram._upper_bounds)
    except AttributeError:
        return histogram.observe
    if len(buckets) != len(bounds) or bounds[-1] != float("inf"):
        return histogram.observe

    def observe(amount: float) -> None:
        total.inc(amount)
        buckets[bisect_left(bounds, amount)].inc(1)  # the first bound >= amount, as Histogram.observe picks it

    return observe


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
