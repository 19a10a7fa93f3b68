"""/metrics as Prometheus scrapes it: a real `maasctl serve` subprocess, requests over HTTP, the text parsed with
prometheus-client's parser."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import http, infer, load_dataplane, metric, scrape, start_server, stop_server

LABELS = {"model": "digits", "version": "1"}


@pytest.fixture(scope="module")
def server(model_repo):
    srv = start_server(model_repo, "--max-batch-size", "8", "--max-queue-delay-ms", "1", "--max-queue-size", "16")
    yield srv
    stop_server(srv)


def test_metrics_count_requests_samples_executions_and_failures(server):
    rng = np.random.default_rng(0)
    before = scrape(server.url)
    assert metric(before, "nv_inference_request_success_total", **LABELS) == 0  # the series exist before any request
    assert metric(before, "maasctl_model_info", **LABELS, provider="CPUExecutionProvider", max_batch_size="8") == 1

    for rows in (2, 5, 1):  # one after another: three executions
        assert infer(server.url, "digits", {"input": rng.random((rows, 1, 8, 8), dtype=np.float32)})[0] == 200
    bad = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    assert http("POST", server.url + "/v2/models/digits/infer", json.dumps(bad).encode())[0] == 400
    assert http("POST", server.url + "/v2/models/nope/infer", json.dumps(bad).encode())[0] == 404

    after = scrape(server.url)
    assert metric(after, "nv_inference_request_success_total", **LABELS) == 3
    assert metric(after, "nv_inference_request_failure_total", **LABELS, reason="OTHER") == 1
    assert metric(after, "nv_inference_request_failure_total", **LABELS) == 1
    assert metric(after, "nv_inference_count_total", **LABELS) == 8
    assert metric(after, "nv_inference_exec_count_total", **LABELS) == 3
    for histogram in (
        "maasctl_inference_queue_seconds",
        "maasctl_inference_compute_seconds",
        "maasctl_inference_request_seconds",
    ):
        assert metric(after, histogram + "_count", **LABELS) == 3, histogram
        assert metric(after, histogram + "_bucket", **LABELS, le="+Inf") == 3, histogram
        assert 0 < metric(after, histogram + "_sum", **LABELS) < 30, histogram
    assert metric(after, "nv_inference_pending_request_count", **LABELS) == 0
    assert not any(("model", "nope") in labels for _, labels in after), "an unknown model name became a label"


def test_each_app_counts_on_its_own(model_repo):
    a, b = load_dataplane(model_repo), load_dataplane(model_repo)
    import asyncio

    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}
    ).encode()
    asyncio.run(a.infer("digits", None, body, None))
    assert b'nv_inference_request_success_total{model="digits",version="1"} 1.0' in a.metrics.render()
    assert b'nv_inference_request_success_total{model="digits",version="1"} 0.0' in b.metrics.render()


def test_a_tally_folds_into_the_same_buckets_count_and_sum_as_observe():
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from maasctl.serve.metrics import LATENCY_BUCKETS, Observations

    values = [0.0, *LATENCY_BUCKETS, *(b * 1.0001 for b in LATENCY_BUCKETS), 0.00003, 3.0, 99.0]  # bounds: le
    samples = []
    for tallied in (False, True):
        registry = CollectorRegistry()
        series = Histogram("t_seconds", "t", ["model"], buckets=LATENCY_BUCKETS, registry=registry).labels("m")
        counter = Counter("n", "n", ["model"], registry=registry).labels("m")
        if tallied:
            tally = Observations(series, counter, every=7)
            for value in values:
                tally.add(value)
            assert len(tally) == len(values) % 7  # not yet folded: a scrape folds them (Metrics.render)
            tally.fold()
        else:
            for value in values:
                series.observe(value)
                counter.inc()
        samples.append({(s.name, s.labels.get("le")): s.value for m in registry.collect() for s in m.samples})
    plain, folded = samples
    assert folded[("n_total", None)] == len(values)
    assert folded.pop(("t_seconds_sum", None)) == pytest.approx(plain.pop(("t_seconds_sum", None)), rel=1e-12)
    drop = {"t_seconds_created", "n_created"}
    assert {k: v for k, v in folded.items() if k[0] not in drop} == {k: v for k, v in plain.items() if k[0] not in drop}
    assert folded[("t_seconds_bucket", "0.0001")] == 3  # 0, 0.00003 and 0.0001 itself
