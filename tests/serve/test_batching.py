"""Dynamic batching, observed as a client and an operator see it: real HTTP on loopback, answers compared with
onnxruntime run in-process, batch counts read from /metrics.

To make "these requests were queued together" a fact rather than a timing accident, some tests hold the model's
first execution at a gate (a wrapper around the real onnxruntime call): while it waits, later requests can only
queue; /metrics shows them pending; opening the gate lets the batcher take them.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
from helpers import (
    Gate,
    digits,
    file_onnx_model,
    http,
    infer,
    load_dataplane,
    metric,
    scrape,
    serving,
    wait_until,
    write_rowsum_model,
)


@pytest.fixture(scope="module")
def digits_session(model_repo):
    return ort.InferenceSession(str(model_repo / "digits/1/model.onnx"), providers=["CPUExecutionProvider"])


def test_requests_queued_together_run_as_one_batch_and_each_gets_its_own_rows(model_repo, digits_session):
    dataplane = load_dataplane(model_repo, max_batch_size=32, max_queue_delay_ms=0)
    gate = Gate(dataplane.model("digits"))
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
    dataplane = load_dataplane(tmp_path, max_batch_size=8, max_queue_delay_ms=0)
    gate = Gate(dataplane.model("rowsum"))
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
    # gated one; widths 3 (2+3 rows); widths 5 (1+2 rows); the 10-row request alone, in slices of 8 and 2 rows
    # (a request over --max-batch-size runs a batch at a time, so its size cannot blow up the model's memory)
    assert metric(samples, "nv_inference_exec_count_total", model="rowsum") == 5
    assert metric(samples, "nv_inference_count_total", model="rowsum") == 1 + 18


def test_a_full_queue_answers_503_at_once_and_the_server_keeps_serving(model_repo, digits_session):
    dataplane = load_dataplane(model_repo, max_batch_size=1, max_queue_size=2)
    gate = Gate(dataplane.model("digits"))
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

    dataplane = load_dataplane(model_repo, max_batch_size=32, max_queue_delay_ms=200)
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


def _write_lookup_model(repo) -> None:
    """ids INT64 [batch, 2] -> vectors = TABLE[ids] FP32 [batch, 2, 3]: an id outside 0..3 makes onnxruntime's
    Gather fail, for the whole batch that holds it."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["vectors"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 2])],
        [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, ["batch", 2, 3])],
        initializer=[numpy_helper.from_array(LOOKUP_TABLE, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    file_onnx_model(
        repo,
        "lookup",
        model,
        inputs=[{"name": "ids", "datatype": "INT64", "shape": [-1, 2]}],
        outputs=[{"name": "vectors", "datatype": "FP32", "shape": [-1, 2, 3]}],
    )


LOOKUP_TABLE = np.arange(12, dtype=np.float32).reshape(4, 3)


def _infer_ids(base: str, ids: list[list[int]]) -> tuple[int, dict]:
    doc = {
        "inputs": [
            {"name": "ids", "shape": [len(ids), 2], "datatype": "INT64", "data": [i for row in ids for i in row]}
        ]
    }
    status, _, body = http("POST", f"{base}/v2/models/lookup/infer", json.dumps(doc).encode())
    return status, json.loads(body)


def test_a_failed_batch_is_rerun_request_by_request_so_one_bad_request_fails_alone(tmp_path):
    _write_lookup_model(tmp_path)
    dataplane = load_dataplane(tmp_path, max_batch_size=32, max_queue_delay_ms=0)
    model = dataplane.model("lookup")
    executed = []  # rows per onnxruntime call, as the batcher made them
    run = model.run

    def recorded(feeds, output_names=None):
        executed.append(len(feeds["ids"]))
        return run(feeds, output_names)

    model.run = recorded
    gate = Gate(model)  # holds the first execution, so the next three queue and go together
    requests = [[[0, 1]], [[2, 99], [1, 1]], [[3, 2], [0, 0]]]  # the middle one holds an id out of range
    with serving(dataplane) as base, ThreadPoolExecutor(len(requests) + 1) as pool:
        first = pool.submit(_infer_ids, base, [[3, 3]])
        assert gate.entered.wait(15)
        replies = []
        for ids in requests:  # one at a time, so the queue order is the order above
            replies.append(pool.submit(_infer_ids, base, ids))
            wait_until(lambda: metric(scrape(base), "nv_inference_pending_request_count") == len(replies), "queueing")
        gate.open.set()
        assert first.result()[0] == 200
        (good1, doc1), (bad, doc2), (good2, doc3) = (r.result() for r in replies)
        samples = scrape(base)
    # the held one alone; the three together (5 rows), which fail; then each of the three alone
    assert executed == [1, 5, 1, 2, 2]
    assert good1 == 200 and doc1["outputs"][0]["data"] == LOOKUP_TABLE[[0, 1]].ravel().tolist()
    assert good2 == 200 and doc3["outputs"][0]["data"] == LOOKUP_TABLE[[3, 2, 0, 0]].ravel().tolist()
    assert bad == 400 and "model 'lookup' rejected the input" in doc2["error"], doc2
    assert metric(samples, "nv_inference_request_success_total", model="lookup") == 3
    assert metric(samples, "nv_inference_request_failure_total", model="lookup", reason="BACKEND") == 1
    assert metric(samples, "nv_inference_exec_count_total", model="lookup") == 3  # executions that succeeded


def test_the_model_thread_answers_each_batch_in_order_passes_errors_on_and_stops():
    import asyncio
    import threading

    from maasctl.serve.batching import ModelThread

    ran_in: list[str] = []

    def work(value: int) -> int:
        ran_in.append(threading.current_thread().name)
        if value < 0:
            raise ValueError(f"bad value {value}")
        return value * 2

    async def main() -> None:
        thread = ModelThread("maasctl-test")
        assert await asyncio.gather(*(thread.run(work, v) for v in range(5))) == [0, 2, 4, 6, 8]
        with pytest.raises(ValueError, match="bad value -1"):
            await thread.run(work, -1)
        assert await thread.run(work, 21) == 42  # an error does not end the thread
        thread.stop()
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert set(ran_in) == {"maasctl-test"}  # one thread of its own, not the event loop's
    assert not any(t.name == "maasctl-test" for t in threading.enumerate())  # stop ended it
