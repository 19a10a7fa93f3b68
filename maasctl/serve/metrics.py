"""Prometheus metrics, named after Triton's so existing dashboards carry over (prometheus-client adds `_total` to
counters). Each DataPlane owns a registry of its own: several servers in one process never share counts."""

from __future__ import annotations

import contextlib
import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # --workers: every worker's samples, summed
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
