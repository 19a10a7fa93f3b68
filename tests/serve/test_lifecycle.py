"""Request timeouts, the JSON access log, and a SIGTERM with requests in flight: real `maasctl serve` subprocesses."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
from helpers import http, infer, metric, scrape, start_server, stop_server, wait_until


def test_a_request_that_waits_too_long_gets_504_and_every_request_is_logged_as_json(model_repo):
    # A lone row waits up to 10 s for company; the timeout (0.5 s) comes first. A full batch does not wait.
    server = start_server(model_repo, "--max-queue-delay-ms", "10000", "--request-timeout-s", "0.5", "--access-log")
    try:
        start = time.monotonic()
        status, _, reply = infer(server.url, "digits", {"input": np.zeros((1, 1, 8, 8), np.float32)})
        assert status == 504 and "no result within 0.5 s" in reply["error"] and "queue" in reply["error"], reply
        assert time.monotonic() - start < 5
        # Through a proxy on this host (KServe's queue-proxy, a sidecar): the log names the proxy's client
        forwarded = {"X-Forwarded-For": "203.0.113.7"}
        status, _, reply = infer(server.url, "digits", {"input": np.zeros((32, 1, 8, 8), np.float32)}, forwarded)
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
    assert infers[0]["client"].startswith("127.0.0.1:") and infers[1]["client"].startswith("203.0.113.7:"), infers
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


def test_max_body_mb_refuses_a_larger_body_with_413_and_keeps_serving(model_repo):
    # --max-body-mb 0.25: a quarter MiB. A JSON infer body over it is refused before it is decoded; one under it works.
    limit = 256 * 1024
    server = start_server(model_repo, "--max-body-mb", "0.25")
    try:
        big = np.zeros((1200, 1, 8, 8), np.float32)  # 76,800 zeros as JSON: about 384 KB, over 256 KiB
        doc = {
            "inputs": [{"name": "input", "shape": list(big.shape), "datatype": "FP32", "data": big.ravel().tolist()}]
        }
        body = json.dumps(doc).encode()
        assert len(body) > limit
        status, _, raw = http("POST", f"{server.url}/v2/models/digits/infer", body)
        assert status == 413, raw
        assert json.loads(raw)["error"] == f"request body of {len(body)} bytes exceeds the limit of {limit} bytes"
        status, _, reply = infer(server.url, "digits", {"input": np.zeros((2, 1, 8, 8), np.float32)})
        assert status == 200 and reply["outputs"][0]["shape"] == [2, 10]
    finally:
        code, log = stop_server(server)
    assert code == 0, log


def test_host_0_0_0_0_without_a_token_logs_a_warning(model_repo):
    warning = "listening on 0.0.0.0 without a token: anyone who can reach the port can use it (set MAASCTL_TOKEN)"
    server = start_server(model_repo, "--host", "0.0.0.0")  # reachable on loopback too
    assert http("GET", f"{server.url}/v2/health/ready")[0] == 200
    code, log = stop_server(server)
    assert code == 0 and warning in log, log
    # with a token, or on loopback (the default), there is nothing to warn about
    server = start_server(model_repo, "--host", "0.0.0.0", "--token", "s3cret")
    code, log = stop_server(server)
    assert code == 0 and "without a token" not in log, log
    server = start_server(model_repo)
    code, log = stop_server(server)
    assert code == 0 and "without a token" not in log, log


def test_sigint_drains_in_flight_requests_then_exits_0(model_repo):
    # Ctrl-C in a terminal sends SIGINT: the same drain as SIGTERM. Requests wait 1.5 s in the queue for company.
    server = start_server(model_repo, "--max-queue-delay-ms", "1500")
    xs = [np.random.default_rng(i).random((2, 1, 8, 8), dtype=np.float32) for i in range(3)]
    with ThreadPoolExecutor(len(xs)) as pool:
        replies = [pool.submit(infer, server.url, "digits", {"input": x}) for x in xs]
        try:
            wait_until(
                lambda: metric(scrape(server.url), "nv_inference_pending_request_count", model="digits") == 3,
                "3 queued requests",
            )
        finally:
            server.proc.send_signal(signal.SIGINT)
            out, _ = server.proc.communicate(timeout=30)
        results = [r.result() for r in replies]
    assert server.proc.returncode == 0, out
    session = ort.InferenceSession(str(model_repo / "digits/1/model.onnx"), providers=["CPUExecutionProvider"])
    for x, (status, _, reply) in zip(xs, results):
        assert status == 200, reply
        np.testing.assert_allclose(reply["arrays"]["logits"], session.run(None, {"input": x})[0], rtol=1e-5, atol=1e-5)


def test_drain_seconds_running_out_stops_the_server_without_waiting_for_the_request(model_repo):
    # A lone request would wait 20 s in the queue for company; --drain-seconds 1 gives it one second after SIGINT.
    server = start_server(model_repo, "--max-queue-delay-ms", "20000", "--drain-seconds", "1")
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]}
    ).encode()
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(http, "POST", f"{server.url}/v2/models/digits/infer", body)
        try:
            wait_until(
                lambda: metric(scrape(server.url), "nv_inference_pending_request_count", model="digits") == 1,
                "a queued request",
            )
        finally:
            start = time.monotonic()
            server.proc.send_signal(signal.SIGINT)
            out, _ = server.proc.communicate(timeout=30)
            took = time.monotonic() - start
        status, headers, raw = reply.result()
    # It is answered as any refusal is, not with a bare 500, and the server exits 0 long before the 20 s were up.
    assert status == 503 and headers["content-type"] == "application/json", raw
    assert json.loads(raw) == {"error": "the server shut down before this request finished (--drain-seconds 1)"}
    assert server.proc.returncode == 0, out
    assert 1 <= took < 10, (took, out)
    assert "timeout graceful shutdown exceeded" in out and "Traceback" not in out, out
