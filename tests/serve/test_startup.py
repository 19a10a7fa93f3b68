"""Start-up that fails fast, through the real CLI: `--device cuda` without CUDA, and a model that fails to load
(Triton's --exit-on-error, and --no-exit-on-error to serve what loaded)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import file_onnx_model, free_port, http, run_cli, start_server, stop_server


def file_doubler(repo: Path, name: str, corrupt: bool = False) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    folder = file_onnx_model(
        repo,
        name,
        model,
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    )
    if corrupt:
        with open(folder / "model.onnx", "ab") as f:
            f.write(b"\0")  # the manifest's sha256 no longer matches


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_device_cuda_without_the_provider_refuses_before_binding_the_port(tmp_path):
    file_doubler(tmp_path / "repo", "good")
    port = free_port()
    proc = run_cli(
        "serve", "--repo", str(tmp_path / "repo"), "--port", str(port), "--device", "cuda", check=False, timeout=60
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("error:") == 1, proc.stderr  # one message, not one per model
    assert "onnxruntime-gpu" in proc.stderr and "--device cpu" in proc.stderr  # the fix, both ways
    assert "Uvicorn running" not in proc.stderr + proc.stdout
    assert "failed to load" not in proc.stderr  # refused before any model was tried
    assert port_is_free(port)


def test_a_model_that_fails_to_load_at_start_up_stops_the_server(tmp_path):
    repo = tmp_path / "repo"
    file_doubler(repo, "good")
    file_doubler(repo, "broken", corrupt=True)
    port = free_port()
    proc = run_cli("serve", "--repo", str(repo), "--port", str(port), check=False, timeout=60)
    assert proc.returncode == 3, proc.stderr
    message = proc.stderr.split("error:")[-1]
    assert "broken version 1" in message and "sha256" in message  # which one, and why
    assert "--no-exit-on-error" in message  # and the way to serve the rest anyway
    assert "Uvicorn running" not in proc.stderr + proc.stdout
    assert port_is_free(port)


def test_no_exit_on_error_serves_the_models_that_loaded(tmp_path):
    repo = tmp_path / "repo"
    file_doubler(repo, "good")
    file_doubler(repo, "broken", corrupt=True)
    server = start_server(repo, "--no-exit-on-error", ready=False)
    try:
        body = b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}'
        status, _, reply = http("POST", server.url + "/v2/models/good/infer", body)
        assert status == 200 and b"[2.0,4.0]" in reply
        assert http("POST", server.url + "/v2/models/broken/infer", body)[0] == 404
        assert http("GET", server.url + "/v2/health/ready")[0] == 503  # today's rule: a failed model is not ready
    finally:
        code, log = stop_server(server)
    assert code == 0, log
    assert "model broken version 1 failed to load" in log


def test_a_failed_load_after_start_up_keeps_the_serving_version(tmp_path):
    """The rule for loads after start-up is unchanged by --exit-on-error: the server stays up and keeps serving."""
    repo = tmp_path / "repo"
    file_doubler(repo, "good")
    server = start_server(repo)
    try:
        file_doubler(repo, "late", corrupt=True)
        status, _, reply = http("POST", server.url + "/v2/repository/models/late/load")
        assert status == 400 and b"sha256" in reply
        x = np.array([[1.0, 2.0]], dtype=np.float32)
        body = (
            b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": %s}]}'
            % str(x.ravel().tolist()).encode()
        )
        assert http("POST", server.url + "/v2/models/good/infer", body)[0] == 200
        assert server.proc.poll() is None
    finally:
        code, log = stop_server(server)
    assert code == 0, log
