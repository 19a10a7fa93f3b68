"""`maasctl serve --workers 2`, a real process tree: both workers on one port, /metrics summed over them, a load
taken by one worker reaching the other, and SIGTERM draining both. The model is `y = x + version`, so every
answer says which version computed it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from helpers import (
    file_adder,
    free_port,
    http,
    infer,
    metric,
    run_cli,
    scrape,
    start_server,
    stop_server,
    wait_until,
)

X = np.arange(8, dtype=np.float32).reshape(4, 2)  # a full batch (--max-batch-size 4): it runs at once


def listening_sockets(port: int) -> int:
    """How many sockets listen on `port` (state 0A in /proc/net/tcp): one per worker with SO_REUSEPORT."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for row in rows if int(row[1].split(":")[1], 16) == port and row[3] == "0A")


def served_by(base: str) -> int:
    status, _, reply = infer(base, "adder", {"x": X})  # a new connection each time: either worker may take it
    assert status == 200, reply
    return round(float((reply["arrays"]["y"] - X)[0, 0]))


def test_two_workers_share_a_port_sum_their_metrics_follow_loads_and_drain(tmp_path):
    repo = tmp_path / "repo"
    file_adder(repo, 1)
    # a batch that is not full waits up to 1 s for company: what keeps requests in flight for the SIGTERM below
    server = start_server(repo, "--workers", "2", "--max-batch-size", "4", "--max-queue-delay-ms", "1000")
    port = int(server.url.rsplit(":", 1)[1])
    try:
        wait_until(lambda: listening_sockets(port) == 2, "both workers to listen on the port")

        # 40 connections, spread by the kernel over both workers; every scrape, whichever worker answers it,
        # counts all 40
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda _: served_by(server.url), range(40))) == {1}
        for _ in range(6):
            assert metric(scrape(server.url), "nv_inference_request_success_total", model="adder") == 40

        # a new version, loaded through one worker, reaches the other
        file_adder(repo, 2)
        status, _, body = http("POST", server.url + "/v2/repository/models/adder/load")
        assert status == 200, body
        wait_until(lambda: all(served_by(server.url) == 2 for _ in range(10)), "both workers to serve version 2")
        assert {served_by(server.url) for _ in range(20)} == {2}

        # SIGTERM with requests queued (1 row each, 3 rows in all: no batch fills): all answered, then exit 0
        with ThreadPoolExecutor(3) as pool:
            replies = [pool.submit(infer, server.url, "adder", {"x": X[:1] + i}) for i in range(3)]
            wait_until(
                lambda: metric(scrape(server.url), "nv_inference_pending_request_count", model="adder") == 3,
                "3 queued requests",
            )
            code, log = stop_server(server)
            results = [r.result() for r in replies]
    finally:
        if server.proc.poll() is None:
            code, log = stop_server(server)
    assert code == 0, log
    assert [status for status, _, _ in results] == [200] * 3
    for i, (_, _, reply) in enumerate(results):
        np.testing.assert_array_equal(reply["arrays"]["y"], X[:1] + i + 2)
    assert log.count("Finished server process") == 2, log
    assert "applied load of adder, taken by another worker" in log


def test_a_worker_that_cannot_start_stops_the_rest(tmp_path):
    repo = tmp_path / "repo"
    file_adder(repo, 1)
    with open(repo / "adder" / "1" / "model.onnx", "ab") as f:
        f.write(b"\0")  # sha256 mismatch: each worker fails its start-up load
    proc = run_cli("serve", "--repo", str(repo), "--port", str(free_port()), "--workers", "2", check=False, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "failed to load at start-up" in proc.stderr
