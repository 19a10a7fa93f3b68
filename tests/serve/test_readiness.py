"""Readiness over real HTTP (the app under uvicorn in a thread, tritonclient as the probe): 503 while loading and
while a model present at start has no version it can serve; 200 once it has one. Liveness stays 200 throughout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from helpers import file_onnx_model, http, infer, serving, write_rowsum_model

from maasctl.repository import ModelRepository
from maasctl.serve.batching import BatchingConfig
from maasctl.serve.dataplane import DataPlane


def _file_reshape_model(repo: Path, version: int, rows_out: int) -> None:
    """x FP32 [batch, 2] reshaped to [rows_out]: valid ONNX, but with rows_out=3 no input can run (2 values per row
    never make 3), so its warm-up inference fails; with rows_out=-1 it works."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows_out if rows_out > 0 else "n"])],
        initializer=[numpy_helper.from_array(np.array([rows_out], dtype=np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    file_onnx_model(
        repo,
        "flat",
        model,
        version=version,
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [rows_out]}],
    )


def _ready(base: str) -> tuple[int, bytes]:
    status, _, body = http("GET", f"{base}/v2/health/ready")
    return status, body


def test_ready_is_503_while_loading_and_while_a_model_cannot_serve(tmp_path):
    write_rowsum_model(tmp_path)
    _file_reshape_model(tmp_path, 1, rows_out=3)
    plane = DataPlane(ModelRepository(tmp_path), "cpu", BatchingConfig())
    with serving(plane) as base:
        client = httpclient.InferenceServerClient(base.removeprefix("http://"))
        try:
            assert _ready(base) == (503, b'{"ready":false}')  # not loaded yet
            plane.load_all()  # the good model loads; the broken one is reported, and readiness waits for it
            assert _ready(base) == (503, b'{"ready":false}')
            assert not client.is_server_ready() and client.is_server_live()
            assert http("GET", f"{base}/v2/health/live")[0] == 200
            status, _, reply = infer(base, "rowsum", {"x": np.ones((2, 3), np.float32)})  # the rest still serves
            assert status == 200 and reply["outputs"][0]["data"] == [3.0, 3.0]
            status, _, reply = infer(base, "flat", {"x": np.ones((1, 2), np.float32)})
            assert status == 404 and "warm-up inference failed" in reply["error"], reply

            _file_reshape_model(tmp_path, 2, rows_out=-1)  # a working version, loaded on request
            status, _, body = http("POST", f"{base}/v2/repository/models/flat/load")
            assert status == 200, body
            assert _ready(base) == (200, b'{"ready":true}')
            assert client.is_server_ready()
        finally:
            client.close()
