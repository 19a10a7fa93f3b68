"""Request timeouts, the JSON access log, and a SIGTERM with requests in flight: real `maasctl serve` subprocesses."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
from helpers import infer, metric, scrape, start_server, stop_server, wait_until


def test_a_request_that_waits_too_long_gets_504_and_every_request_is_logged_as_json(model_repo):
    # A lone row waits up to 10 s for company; the timeout (0.5 s) comes first. A full batch does not wait.
    server = start_server(model_repo, "--max-queue-delay-ms", "10000", "--request-timeout-s", "0.5", "--access-log")
    try:
        start = time.monotonic()
        status, _, reply = infer(server.url, "digits", {"input": np.zeros((1, 1, 8, 8), np.float32)})
        assert status == 504 and "no result within 0.5 s" in reply["error"] and "queue" in reply["error"], reply
        assert time.monotonic() - start < 5
        status, _, reply = infer(server.url, "digits", {"input": np.zeros((32, 1, 8, 8), np.float32)})
        assert status == 200 and reply["outputs"][0]["shape"] == [32, 10]
        assert metric(scrape(server.url), "nv_inference_request_failure_total", model="digits", reason="TIMEOUT") == 1
    finally:
        code, log = stop_server(server)
    assert code == 0, log
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    infers = [e for e in entries if e["path"] == "/v2/models/digits/infer"]
    assert [e["status"] for e in infers] == [504, 200], log
    assert infers[0]["duration_ms"] >= 500 and infers[0]["method"] == "POST" and infers[0]["bytes_in"] > 0
    assert infers[1]["bytes_out"] > 32 * 10  # 320 logits, as JSON text
    assert {"time", "client", "user_agent"} <= set(infers[0])
    assert any(e["path"] == "/metrics" and e["status"] == 200 for e in entries)


def test_sigterm_lets_in_flight_requests_finish_then_exits_0(model_repo):
    # Requests wait up to 1.5 s in the queue for a batch: long enough to SIGTERM while all four are in flight.
    server = start_server(model_repo, "--max-queue-delay-ms", "1500")
    xs = [np.random.default_rng(i).random((2, 1, 8, 8), dtype=np.float32) for i in range(4)]
    with ThreadPoolExecutor(len(xs)) as pool:
        replies = [pool.submit(infer, server.url, "digits", {"input": x}) for x in xs]
        try:
            wait_until(
                lambda: metric(scrape(server.url), "nv_inference_pending_request_count", model="digits") == 4,
                "4 queued requests",
            )
        finally:
            code, log = stop_server(server)
        results = [r.result() for r in replies]
    assert code == 0, log
    session = ort.InferenceSession(str(model_repo / "digits/1/model.onnx"), providers=["CPUExecutionProvider"])
    for x, (status, _, reply) in zip(xs, results):
        assert status == 200, reply
        np.testing.assert_allclose(reply["arrays"]["logits"], session.run(None, {"input": x})[0], rtol=1e-5, atol=1e-5)
