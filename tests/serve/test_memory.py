"""Memory under hostile input, against a real `maasctl serve` process: eight 40 MB JSON bodies at once must not
exhaust the machine (one such body used to take the server from 91 MB to 1.95 GB resident, for good)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
import pytest
from helpers import http, start_server, stop_server, write_rowsum_model

ROWS, COLUMNS = 100_000, 70  # 7 million numbers, about 40 MB of JSON
MB = 1024 * 1024
# The bound this test holds the server to, growth of its peak resident memory over its idle size: what
# maasctl/serve/memory.py says it holds at most (--max-decoding-mb, 128 MB, of bodies with their tensors, about
# 2x, plus one JSON decode at a time, about 10x one body), with room for the allocator. Measured: 89 MB idle, 728
# MB peak (3 requests admitted, 5 told to retry).
GROWTH_BOUND_MB = 900


def memory_mb(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {key: int(fields[key].split()[0]) // 1024 for key in ("VmRSS", "VmHWM")}


@pytest.fixture(scope="module")
def body() -> tuple[bytes, np.ndarray]:
    x = np.random.default_rng(0).random((ROWS, COLUMNS)).round(3)
    doc = {"inputs": [{"name": "x", "shape": [ROWS, COLUMNS], "datatype": "FP32", "data": x.ravel().tolist()}]}
    return orjson.dumps(doc), x.astype(np.float32).sum(axis=1, keepdims=True)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads resident memory from /proc")
def test_eight_40mb_json_bodies_at_once_stay_within_the_bound(tmp_path, body):
    payload, expected = body
    assert len(payload) > 40e6
    write_rowsum_model(tmp_path / "repo")
    server = start_server(tmp_path / "repo", "--max-json-mb", "64")  # let them through to the decoder
    try:
        url = server.url + "/v2/models/rowsum/infer"
        small = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
        assert http("POST", url, small)[0] == 200
        idle = memory_mb(server.proc.pid)["VmRSS"]
        with open(f"/proc/{server.proc.pid}/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to now

        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: http("POST", url, payload), range(8)))
        peak = memory_mb(server.proc.pid)["VmHWM"]

        statuses = sorted(status for status, _, _ in replies)
        assert set(statuses) <= {200, 503} and statuses[0] == 200, statuses
        for status, headers, reply in replies:
            if status == 200:
                got = np.array(orjson.loads(reply)["outputs"][0]["data"], np.float32).reshape(ROWS, 1)
                np.testing.assert_allclose(got, expected, rtol=1e-4)
            else:  # more than --max-decoding-mb at once: told to come back
                assert headers["retry-after"] == "1" and b"--max-decoding-mb" in reply
        assert peak - idle < GROWTH_BOUND_MB, f"peak {peak} MB from {idle} MB idle; {statuses}"
        status, _, reply = http("POST", url, small)  # and the next request is answered
        assert status == 200 and orjson.loads(reply)["outputs"][0]["data"] == [6.0]
        assert server.proc.poll() is None
    finally:
        code, log = stop_server(server)
    assert code == 0, log


def test_json_bodies_over_the_json_limit_get_413_binary_ones_pass(tmp_path, body):
    payload, _ = body
    write_rowsum_model(tmp_path / "repo")
    server = start_server(tmp_path / "repo")  # defaults: 64 MB bodies, 16 MB of JSON
    try:
        url = server.url + "/v2/models/rowsum/infer"
        status, _, reply = http("POST", url, payload)
        assert status == 413 and b"--max-json-mb" in reply and b"binary" in reply
        x = np.ones((ROWS, COLUMNS), np.float32)  # 28 MB as binary tensor data: within the body limit
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [ROWS, COLUMNS],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ]
            }
        )
        headers = {"Inference-Header-Content-Length": str(len(header))}
        status, _, reply = http("POST", url, header + x.tobytes(), headers)
        assert status == 200 and orjson.loads(reply)["outputs"][0]["data"][:2] == [70.0, 70.0]
    finally:
        code, log = stop_server(server)
    assert code == 0, log
