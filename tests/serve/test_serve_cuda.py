"""`maasctl serve --device cuda|auto` on onnxruntime's CUDA provider: the provider is reported (log, manifest,
metrics) and the answers match onnxruntime on the CPU. Marked `gpu("onnxruntime")`: runs where onnxruntime-gpu is
installed and sees a device (`python -m pytest -m gpu`)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from helpers import digits, http, infer, metric, scrape, start_server, stop_server

pytestmark = pytest.mark.gpu("onnxruntime")


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_serve_on_cuda_reports_the_provider_and_answers_like_the_cpu(model_repo, device):
    cpu = ort.InferenceSession(str(model_repo / "digits/1/model.onnx"), providers=["CPUExecutionProvider"])
    server = start_server(model_repo, "--device", device)
    try:
        status, _, body = http("GET", f"{server.url}/v2/models/digits/manifest")
        assert status == 200 and json.loads(body)["provider"] == "CUDAExecutionProvider"
        samples = scrape(server.url)
        assert metric(samples, "maasctl_model_info", model="digits", provider="CUDAExecutionProvider") == 1
        for rows, seed in ((1, 0), (8, 1), (32, 2)):
            x = digits(rows, seed)
            status, _, reply = infer(server.url, "digits", {"input": x})
            assert status == 200, reply
            np.testing.assert_allclose(reply["arrays"]["logits"], cpu.run(None, {"input": x})[0], rtol=1e-3, atol=1e-3)
    finally:
        code, log = stop_server(server)
    assert code == 0, log
    assert "model digits version 1 ready on CUDAExecutionProvider" in log
