"""The repository extension and version policy, as an operator drives them: tritonclient and plain HTTP on loopback.

The model is `y = x + version`, so every answer says which version computed it.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from helpers import (
    Gate,
    file_adder,
    file_onnx_model,
    http,
    infer,
    metric,
    run_cli,
    scrape,
    serving,
    start_server,
    stop_server,
    wait_until,
)
from tritonclient.utils import InferenceServerException

from maasctl.repository import ModelRepository
from maasctl.serve.batching import BatchingConfig
from maasctl.serve.dataplane import DataPlane
from maasctl.serve.models import VersionPolicy

X = np.array([[1.0, 2.0]], dtype=np.float32)


def served_by(base: str, version: str | None = None) -> int:
    """Which version answered: y - x."""
    path = "adder" if version is None else f"adder/versions/{version}"
    status, _, reply = infer(base, path, {"x": X})
    assert status == 200, reply
    return round(float((reply["arrays"]["y"] - X)[0, 0]))


def dataplane(repo: Path, policy: str = "latest") -> DataPlane:
    plane = DataPlane(ModelRepository(repo), "cpu", BatchingConfig(), policy)
    plane.load_all()
    return plane


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "repo"


def client(base: str) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(base.removeprefix("http://"))


def index(base: str) -> dict[str, tuple[str, str]]:
    return {row["version"]: (row["state"], row["reason"]) for row in client(base).get_model_repository_index()}


def test_version_policy_parses_what_it_documents():
    assert VersionPolicy.parse("latest").select([3, 1, 2]) == [3]
    assert VersionPolicy.parse("latest:2").select([3, 1, 2]) == [2, 3]
    assert VersionPolicy.parse("all").select([3, 1, 2]) == [1, 2, 3]
    for bad in ("newest", "latest:0", "latest:x", ""):
        with pytest.raises(Exception, match="latest, latest:N"):
            VersionPolicy.parse(bad)


def test_latest_serves_the_highest_version_and_lists_the_others(repo):
    file_adder(repo, 1)
    file_adder(repo, 2)
    with serving(dataplane(repo)) as base:
        assert served_by(base) == 2
        assert http("GET", f"{base}/v2/models/adder/versions/1")[0] == 404
        assert http("GET", f"{base}/v2/models/adder/versions/%C2%B2")[0] == 404  # '²' is a digit to str.isdigit
        assert json.loads(http("GET", f"{base}/v2/models/adder")[2])["versions"] == ["2"]
        assert index(base) == {"1": ("UNAVAILABLE", "not selected by the version policy latest"), "2": ("READY", "")}
        assert "model_repository" in json.loads(http("GET", f"{base}/v2")[2])["extensions"]


def test_policy_all_serves_every_version_by_number(repo):
    for v in (1, 2, 3):
        file_adder(repo, v)
    with serving(dataplane(repo, "all")) as base:
        assert [served_by(base, v) for v in ("1", "2", "3")] == [1, 2, 3]
        assert served_by(base) == 3  # no version: the highest
        assert client(base).is_model_ready("adder", "1")
        assert json.loads(http("GET", f"{base}/v2/models/adder")[2])["versions"] == ["1", "2", "3"]


def test_load_picks_up_a_new_version_and_retires_the_old(repo):
    file_adder(repo, 1)
    plane = dataplane(repo)
    with serving(plane) as base:
        file_adder(repo, 2)
        assert served_by(base) == 1  # nothing changes until asked (no polling)
        client(base).load_model("adder")
        assert served_by(base) == 2
        assert index(base)["1"][0] == "UNAVAILABLE"
        samples = scrape(base)
        assert metric(samples, "maasctl_model_info", model="adder", version="2") == 1
        assert metric(samples, "maasctl_model_info", model="adder", version="1") == 0  # series gone with the version


def test_a_broken_new_version_leaves_the_old_one_serving_and_says_why(repo):
    file_adder(repo, 1)
    with serving(dataplane(repo)) as base:
        file_adder(repo, 2, corrupt=True)
        with pytest.raises(InferenceServerException, match="version 2: .*sha256.*still serving version 1"):
            client(base).load_model("adder")
        assert served_by(base) == 1
        state, reason = index(base)["2"]
        assert state == "UNAVAILABLE" and "sha256" in reason
        assert http("GET", f"{base}/v2/health/ready")[0] == 200  # a bad upload does not take the replica out

        # Fixed in place, the same version loads on the next request.
        shutil.rmtree(repo / "adder" / "2")
        file_adder(repo, 2)
        client(base).load_model("adder")
        assert served_by(base) == 2


def test_unload_stops_serving_and_load_brings_it_back(repo):
    file_adder(repo, 1)
    with serving(dataplane(repo)) as base:
        c = client(base)
        c.unload_model("adder")
        status, _, reply = infer(base, "adder", {"x": X})
        assert status == 404 and "unloaded" in reply["error"]
        assert not c.is_model_ready("adder")
        assert index(base) == {"1": ("UNAVAILABLE", "unloaded")}
        assert c.is_server_ready()  # unloading on purpose is not a fault
        c.load_model("adder")
        assert served_by(base) == 1


def test_unload_lets_queued_requests_finish(repo):
    file_adder(repo, 1)
    plane = dataplane(repo)
    gate = Gate(plane.model("adder"))
    with serving(plane) as base, ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(infer, base, "adder", {"x": X})]
        assert gate.entered.wait(15)
        # Two more queued behind the held one before the unload starts (a request still on its way then is rightly
        # refused with 404: waiting here keeps the test from racing it).
        pending += [pool.submit(infer, base, "adder", {"x": X}) for _ in range(2)]
        wait_until(lambda: metric(scrape(base), "nv_inference_pending_request_count", model="adder") == 2, "queueing")
        unloading = pool.submit(http, "POST", f"{base}/v2/repository/models/adder/unload")
        wait_until(lambda: not plane.repository_index(ready_only=True), "the model to leave the served set")
        assert infer(base, "adder", {"x": X})[0] == 404  # new requests are refused at once...
        gate.open.set()
        assert [f.result(30)[0] for f in pending] == [200, 200, 200]  # ...queued ones complete
        assert unloading.result(30)[0] == 200


def test_polling_loads_new_versions_and_drops_removed_models(repo):
    file_adder(repo, 1)
    with serving(dataplane(repo), poll_seconds=0.05) as base:
        file_adder(repo, 2)
        wait_until(lambda: served_by(base) == 2, "polling to serve version 2")
        file_adder(repo, 3, corrupt=True)
        wait_until(
            lambda: index(base).get("3", ("",))[0] == "UNAVAILABLE" and "sha256" in index(base)["3"][1],
            "version 3 to be reported broken",
        )
        time.sleep(0.3)  # several more polls: the broken version is not retried, the serving one stays
        assert served_by(base) == 2
        shutil.rmtree(repo / "adder")
        wait_until(lambda: infer(base, "adder", {"x": X})[0] == 404, "the removed model to be unloaded")


def test_repository_requests_with_bad_bodies_or_names_get_4xx(repo):
    file_adder(repo, 1)
    with serving(dataplane(repo)) as base:
        cases = [
            ("/v2/repository/index", b"{not json", 400, "not valid JSON"),
            ("/v2/repository/index", b'{"ready": "yes"}', 400, "true or false"),
            ("/v2/repository/index", b"[1]", 400, "JSON object"),
            ("/v2/repository/models/nope/load", b"", 404, "no model 'nope'"),
            ("/v2/repository/models/nope/unload", b"", 404, "unknown model"),
            ("/v2/repository/models/adder/load", b'{"parameters": {"config": "{}"}}', 400, "not supported"),
        ]
        for path, body, status, message in cases:
            got, _, reply = http("POST", base + path, body)
            assert (got, message in json.loads(reply)["error"]) == (status, True), (path, body, reply)
        status, _, reply = http("POST", base + "/v2/repository/index", b'{"ready": true}')
        assert status == 200 and json.loads(reply) == [
            {"name": "adder", "version": "1", "state": "READY", "reason": ""}
        ]
        assert served_by(base) == 1


def test_serve_refuses_an_unknown_version_policy(repo):
    proc = run_cli("serve", "--repo", str(repo), "--version-policy", "newest", check=False)
    assert proc.returncode == 2 and "latest, latest:N" in proc.stderr


def test_serve_command_polls_with_policy_all(repo):
    file_adder(repo, 1)
    server = start_server(repo, "--version-policy", "all", "--poll-seconds", "0.1")
    try:
        file_adder(repo, 2)
        wait_until(lambda: index(server.url).get("2", ("",))[0] == "READY", "version 2 to be polled in")
        assert (served_by(server.url, "1"), served_by(server.url, "2")) == (1, 2)  # policy all: both serve
    finally:
        code, log = stop_server(server)
    assert code == 0, log
    assert "model adder version 2 ready" in log


def test_a_new_version_takes_over_under_load_without_a_failed_request(repo):
    file_adder(repo, 1)
    with serving(dataplane(repo)) as base, ThreadPoolExecutor(4) as pool:
        stop, answers = threading.Event(), []

        def client_loop() -> None:
            while not stop.is_set():
                status, _, reply = infer(base, "adder", {"x": X})
                answers.append(round(float((reply["arrays"]["y"] - X)[0, 0])) if status == 200 else status)

        loops = [pool.submit(client_loop) for _ in range(3)]
        wait_until(lambda: len(answers) > 20, "traffic on version 1")
        file_adder(repo, 2)
        assert http("POST", f"{base}/v2/repository/models/adder/load")[0] == 200
        seen = len(answers)
        wait_until(lambda: len(answers) > seen + 20, "traffic after the load")
        stop.set()
        for f in loops:
            f.result(30)
    assert set(answers) <= {1, 2}, sorted(set(answers))  # every request answered 200, by one version or the other
    assert answers[-1] == 2 and answers.index(2) > 0
    assert 1 not in answers[answers.index(2) + 10 :]  # once switched, it stays switched (a few in flight aside)


def test_a_model_that_loads_but_cannot_run_is_reported_not_fatal(repo):
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(  # valid ONNX, but no input of 2 values per row reshapes to 3 values
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        initializer=[numpy_helper.from_array(np.array([3], dtype=np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    file_onnx_model(
        repo,
        "bad",
        model,
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [3]}],
    )
    file_adder(repo, 1)
    plane = dataplane(repo)  # the good model loads; the bad one is reported
    index = {row["name"]: row for row in plane.repository_index()}
    assert [name for name, row in index.items() if row["state"] == "READY"] == ["adder"]
    assert "warm-up inference failed" in index["bad"]["reason"]
    assert not plane.ready


def test_model_ready_gauge_follows_what_readiness_reports(repo):
    file_adder(repo, 1, corrupt=True)  # present at start, but nothing loads: not ready
    with serving(dataplane(repo)) as base:
        assert http("GET", f"{base}/v2/health/ready")[0] == 503
        assert metric(scrape(base), "maasctl_model_ready", model="adder") == 0
        assert ("maasctl_model_ready", frozenset({("model", "adder")})) in scrape(base)  # 0, not absent

        shutil.rmtree(repo / "adder" / "1")
        file_adder(repo, 1)
        client(base).load_model("adder")
        assert metric(scrape(base), "maasctl_model_ready", model="adder") == 1
        assert http("GET", f"{base}/v2/health/ready")[0] == 200

        client(base).unload_model("adder")  # on purpose: no series, so no alert
        assert not any(name == "maasctl_model_ready" for name, _ in scrape(base))
