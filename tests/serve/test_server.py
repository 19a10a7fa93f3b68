"""The server with real clients on loopback: tritonclient (JSON and binary tensors) and plain HTTP for errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from maasctl.data import build_dataset
from maasctl.recipe import load_recipe


@pytest.fixture(scope="module")
def samples():
    data = build_dataset(load_recipe().data, seed=0)
    return data.test.x[:16], data.test.y[:16]


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def test_health_and_metadata_with_tritonclient(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("digits")
    assert meta["platform"] == "onnx_onnxv1" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_with_tritonclient_matches_in_process_onnxruntime(client, model_repo, samples, binary):
    import onnxruntime as ort

    x, y = samples
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer("digits", [inp], outputs=[out], request_id="req-7")
    logits = result.as_numpy("logits")
    expected = ort.InferenceSession(str(model_repo / "digits/1/model.onnx")).run(None, {"input": x})[0]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert result.get_response()["id"] == "req-7"
    assert (logits.argmax(1) == y).mean() > 0.8


def test_bad_requests_get_400_and_the_server_keeps_serving(server, samples):
    x, _ = samples
    good = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": x[0].ravel().tolist()}]}
    cases = {
        "wrong shape": {"inputs": [{**good["inputs"][0], "shape": [1, 64]}]},
        "wrong datatype": {"inputs": [{**good["inputs"][0], "datatype": "INT64"}]},
        "too few values": {"inputs": [{**good["inputs"][0], "shape": [2, 1, 8, 8]}]},
        "unknown input": {"inputs": [{**good["inputs"][0], "name": "pixels"}]},
        "no inputs": {"inputs": []},
    }
    for what, body in cases.items():
        status, reply = server.post("/v2/models/digits/infer", json.dumps(body).encode())
        assert status == 400, what
        assert isinstance(reply["error"], str) and reply["error"], what
        status, reply = server.post("/v2/models/digits/infer", json.dumps(good).encode())
        assert status == 200 and reply["outputs"][0]["shape"] == [1, 10], f"after {what}"
    status, reply = server.post("/v2/models/digits/infer", b"{not json")
    assert status == 400 and "not valid JSON" in reply["error"]


def test_unknown_model_and_version_are_404(server, client):
    assert server.get("/v2/models/nope")[0] == 404
    status, reply = server.post("/v2/models/nope/infer", b"{}")
    assert status == 404 and "unknown model 'nope'" in reply["error"]
    assert server.get("/v2/models/digits/versions/9")[0] == 404
    assert server.get("/v2/models/digits/versions/1")[0] == 200
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("nope")


def test_manifest_extension_gives_labels_and_preprocessing(server):
    status, manifest = server.get("/v2/models/digits/manifest")
    assert status == 200 and manifest["labels"][3] == "3" and manifest["provider"] == "CPUExecutionProvider"
    assert manifest["preprocessing"]["height"] == 8
