"""Dynamic batching, observed as a client and an operator see it: real HTTP on loopback, answers compared with
onnxruntime run in-process, batch counts read from /metrics.

To make "these requests were queued together" a fact rather than a timing accident, some tests hold the model's
first execution at a gate (a wrapper around the real onnxruntime call): while it waits, later requests can only
queue; /metrics shows them pending; opening the gate lets the batcher take them.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import uvicorn
from conftest import file_onnx_model
from prometheus_client.parser import text_string_to_metric_families

from maasctl.repository import ModelRepository
from maasctl.serve.batching import BatchingConfig
from maasctl.serve.dataplane import DataPlane
from maasctl.serve.rest import create_app

# --- helpers shared by the tests/test_serve_*.py files ---------------------------------------------------------


@contextlib.contextmanager
def serving(dataplane: DataPlane, **app_options: Any) -> Iterator[str]:
    """The real app in uvicorn on a loopback port, in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(dataplane, **app_options), log_level="warning", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "uvicorn to start")
    assert thread.is_alive(), "uvicorn exited at start-up"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def infer(
    base: str, model: str, inputs: dict[str, np.ndarray], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A JSON infer request; returns status, headers and the document, with outputs turned into arrays."""
    doc = {
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()}
            for n, a in inputs.items()
        ]
    }
    status, reply_headers, body = http("POST", f"{base}/v2/models/{model}/infer", json.dumps(doc).encode(), headers)
    reply = json.loads(body)
    if status == 200:
        reply["arrays"] = {
            o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"]) for o in reply["outputs"]
        }
    return status, reply_headers, reply


def scrape(base: str, headers: dict[str, str] | None = None) -> dict[tuple[str, frozenset], float]:
    """GET /metrics, parsed with prometheus-client's own parser: {(sample name, labels): value}."""
    status, reply_headers, body = http("GET", base + "/metrics", headers=headers)
    assert status == 200, body
    assert reply_headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def metric(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


class Gate:
    """Holds a model's executions until opened; `entered` is set once one is being held."""

    def __init__(self, model: Any) -> None:
        self.open, self.entered = threading.Event(), threading.Event()
        run = model.run

        def gated(feeds, output_names=None):
            self.entered.set()
            assert self.open.wait(30), "gate never opened"
            return run(feeds, output_names)

        model.run = gated


def load(repo: Path, **batching: Any) -> DataPlane:
    dataplane = DataPlane(ModelRepository(repo), "cpu", BatchingConfig(**batching))
    dataplane.load_all()
    assert dataplane.ready, dataplane.failures
    return dataplane


def write_rowsum_model(repo: Path) -> None:
    """A model whose second input dimension is dynamic too: x FP32 [batch, n] -> total = x.sum(1) [batch, 1]."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1)],
        "rowsum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    file_onnx_model(
        repo,
        "rowsum",
        model,
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
        outputs=[{"name": "total", "datatype": "FP32", "shape": [-1, 1]}],
    )


# --- the tests ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_session(model_repo):
    return ort.InferenceSession(str(model_repo / "digits/1/model.onnx"), providers=["CPUExecutionProvider"])


def digits(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 1, 8, 8), dtype=np.float32)


def test_requests_queued_together_run_as_one_batch_and_each_gets_its_own_rows(model_repo, digits_session):
    dataplane = load(model_repo, max_batch_size=32, max_queue_delay_ms=0)
    gate = Gate(dataplane.models["digits"])
    sizes = [1, 2, 3, 4, 4, 3, 2, 1]  # 20 rows: one batch
    xs = [digits(n, seed) for seed, n in enumerate(sizes)]
    with serving(dataplane) as base, ThreadPoolExecutor(len(sizes) + 1) as pool:
        first = pool.submit(infer, base, "digits", {"input": digits(1, 99)})
        assert gate.entered.wait(15), "the first request never reached the model"
        replies = [pool.submit(infer, base, "digits", {"input": x}) for x in xs]
        wait_until(
            lambda: metric(scrape(base), "nv_inference_pending_request_count", model="digits") == len(sizes),
            "8 queued requests",
        )
        gate.open.set()
        assert first.result()[0] == 200
        for x, reply in zip(xs, replies):
            status, _, doc = reply.result()
            assert status == 200, doc
            np.testing.assert_allclose(
                doc["arrays"]["logits"], digits_session.run(None, {"input": x})[0], rtol=1e-5, atol=1e-5
            )
        samples = scrape(base)
    labels = {"model": "digits", "version": "1"}
    assert metric(samples, "nv_inference_exec_count_total", **labels) == 2  # the gated one, then all eight together
    assert metric(samples, "nv_inference_count_total", **labels) == 1 + sum(sizes)
    assert metric(samples, "nv_inference_request_success_total", **labels) == 1 + len(sizes)
    assert metric(samples, "maasctl_inference_queue_seconds_count", **labels) == 1 + len(sizes)
    assert metric(samples, "maasctl_inference_compute_seconds_count", **labels) == 2
    assert metric(samples, "nv_inference_pending_request_count", **labels) == 0


def test_inputs_of_different_shapes_are_never_concatenated(tmp_path):
    write_rowsum_model(tmp_path)
    dataplane = load(tmp_path, max_batch_size=8, max_queue_delay_ms=0)
    gate = Gate(dataplane.models["rowsum"])
    rng = np.random.default_rng(0)
    # Queued in this order: widths 3 and 5 interleaved, and one 10-row request, more than a batch holds.
    xs = [rng.random(shape, dtype=np.float32) for shape in [(2, 3), (1, 5), (3, 3), (2, 5), (10, 3)]]
    with serving(dataplane) as base, ThreadPoolExecutor(len(xs) + 1) as pool:
        first = pool.submit(infer, base, "rowsum", {"x": rng.random((1, 4), dtype=np.float32)})
        assert gate.entered.wait(15)
        replies = []
        for x in xs:  # one at a time, so the queue order is the order above
            replies.append(pool.submit(infer, base, "rowsum", {"x": x}))
            wait_until(
                lambda: metric(scrape(base), "nv_inference_pending_request_count") == len(replies),
                "the request to queue",
            )
        gate.open.set()
        assert first.result()[0] == 200
        for x, reply in zip(xs, replies):
            status, _, doc = reply.result()
            assert status == 200, doc
            np.testing.assert_allclose(doc["arrays"]["total"], x.sum(axis=1, keepdims=True), rtol=1e-5)
        samples = scrape(base)
    # gated one; widths 3 (2+3 rows); widths 5 (1+2 rows); the 10-row request alone
    assert metric(samples, "nv_inference_exec_count_total", model="rowsum") == 4
    assert metric(samples, "nv_inference_count_total", model="rowsum") == 1 + 18


def test_a_full_queue_answers_503_at_once_and_the_server_keeps_serving(model_repo, digits_session):
    dataplane = load(model_repo, max_batch_size=1, max_queue_size=2)
    gate = Gate(dataplane.models["digits"])
    with serving(dataplane) as base, ThreadPoolExecutor(3) as pool:
        held = [pool.submit(infer, base, "digits", {"input": digits(1, 0)})]
        assert gate.entered.wait(15)
        held += [pool.submit(infer, base, "digits", {"input": digits(1, s)}) for s in (1, 2)]
        wait_until(lambda: metric(scrape(base), "nv_inference_pending_request_count") == 2, "a full queue")

        start = time.monotonic()
        status, headers, doc = infer(base, "digits", {"input": digits(1, 3)})
        assert time.monotonic() - start < 5  # refused at once, not queued behind the gate
        assert status == 503 and "overloaded" in doc["error"] and "--max-queue-size 2" in doc["error"], doc
        assert headers["retry-after"] == "1"
        assert metric(scrape(base), "nv_inference_request_failure_total", model="digits", reason="REJECTED") == 1

        gate.open.set()
        assert [f.result()[0] for f in held] == [200, 200, 200]
        x = digits(5, 4)
        status, _, doc = infer(base, "digits", {"input": x})
        assert status == 200
        np.testing.assert_allclose(
            doc["arrays"]["logits"], digits_session.run(None, {"input": x})[0], rtol=1e-5, atol=1e-5
        )


def test_concurrent_tritonclient_requests_are_batched_and_answered_correctly(model_repo, digits_session):
    import tritonclient.http as httpclient

    dataplane = load(model_repo, max_batch_size=32, max_queue_delay_ms=200)
    xs = [digits(1 + i % 3, 100 + i) for i in range(12)]  # 24 rows
    with serving(dataplane) as base:
        client = httpclient.InferenceServerClient(base.removeprefix("http://"), concurrency=len(xs))
        try:
            pending = []
            for i, x in enumerate(xs):
                inp = httpclient.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=i % 2 == 0)
                out = httpclient.InferRequestedOutput("logits", binary_data=i % 2 == 1)
                pending.append(client.async_infer("digits", [inp], outputs=[out], request_id=f"r{i}"))
            for i, (x, request) in enumerate(zip(xs, pending)):
                result = request.get_result()
                assert result.get_response()["id"] == f"r{i}"
                np.testing.assert_allclose(
                    result.as_numpy("logits"), digits_session.run(None, {"input": x})[0], rtol=1e-5, atol=1e-5
                )
        finally:
            client.close()
        samples = scrape(base)
    executions = metric(samples, "nv_inference_exec_count_total", model="digits")
    assert metric(samples, "nv_inference_count_total", model="digits") == sum(len(x) for x in xs)
    assert 1 <= executions < len(xs), f"{len(xs)} requests in {executions} executions: not batched"
