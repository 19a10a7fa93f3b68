"""The dataplane called directly, without HTTP: what the REST (and any other) transport relies on.

A hand-built tabular model small enough to work the answers out by hand: inputs (a, b) standardised with mean
(1, 2) and std (2, 0.5), then logits = x @ W with W = [[1, -1], [0, 2]], labels x and y.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from helpers import file_onnx_model
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from maasctl.errors import UsageError
from maasctl.inputs.uploads import body_sources
from maasctl.preprocess import tabular_spec
from maasctl.protocol.errors import InvalidInput, NotFound
from maasctl.protocol.v2 import HEADER_LENGTH, decode_response, encode_request
from maasctl.repository import ModelRepository
from maasctl.serve.dataplane import DataPlane, Upload

W = np.array([[1.0, -1.0], [0.0, 2.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def dataplane(tmp_path_factory) -> DataPlane:
    repo: Path = tmp_path_factory.mktemp("dataplane") / "models"
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["logits"])],
        "rows",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(W, "W")],
    )
    file_onnx_model(
        repo,
        "rows",
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8),
        inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
        outputs=[{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}],
        labels=["x", "y"],
        preprocessing=tabular_spec(["a", "b"], np.array([1.0, 2.0]), np.array([2.0, 0.5])),
    )
    plane = DataPlane(ModelRepository(repo), "cpu")
    plane.load_all()
    assert plane.ready, plane.repository_index()
    return plane


def _counts(plane: DataPlane) -> dict[tuple[str, str], float]:
    """(sample name, failure reason or "") -> value, for the rows model."""
    out = {}
    for family in text_string_to_metric_families(plane.metrics.render().decode()):
        for s in family.samples:
            if s.labels.get("model") == "rows":
                out[(s.name, s.labels.get("reason", ""))] = s.value
    return out


def _reader(content_type: str, body: bytes, top_k: int = 1, calls: list | None = None):
    async def read(manifest: dict) -> Upload:
        if calls is not None:
            calls.append(manifest["labels"])
        return Upload(body_sources(content_type, body), top_k)

    return read


def test_infer_decodes_runs_and_encodes_binary_outputs(dataplane):
    x = np.array([[1.0, 0.0], [0.0, 2.0], [0.5, -1.0]], dtype=np.float32)
    body, headers = encode_request({"input": x}, ["logits"])
    content, reply_headers = asyncio.run(dataplane.infer("rows", None, body, headers[HEADER_LENGTH]))
    logits = decode_response(content, reply_headers.get(HEADER_LENGTH))["logits"]
    np.testing.assert_allclose(logits, [[1.0, -1.0], [0.0, 4.0], [0.5, -2.5]], rtol=1e-6)


def test_predict_standardises_rows_and_labels_them(dataplane):
    # (3, 2) -> (1, 0) -> logits (1, -1): x with e/(e + 1/e); (1, 3) -> (0, 2) -> logits (0, 4): y with e^4/(1 + e^4)
    read = _reader("text/csv", b"a,b\n3,2\n1,3\n", top_k=2)
    doc = asyncio.run(dataplane.predict("rows", None, read))
    assert doc["model_name"] == "rows" and doc["model_version"] == "1"
    first, second = doc["predictions"]
    assert (first["input"], first["label"], first["index"]) == ("<body>[0]", "x", 0)
    assert first["probability"] == pytest.approx(0.8807970779778823)
    assert [t["label"] for t in first["top_k"]] == ["x", "y"]
    assert (second["input"], second["label"]) == ("<body>[1]", "y")
    assert second["probability"] == pytest.approx(0.9820137900379085)


def test_json_rows_mean_what_csv_rows_mean(dataplane):
    from_csv = asyncio.run(dataplane.predict("rows", None, _reader("text/csv", b"a,b\n3,2\n1,3\n")))
    from_json = asyncio.run(
        dataplane.predict(
            "rows", None, _reader("application/json", b'{"rows": [{"a": 3, "b": 2}, {"b": "3", "a": 1}]}')
        )
    )
    assert from_json["predictions"] == from_csv["predictions"]


def test_an_unknown_model_is_404_before_the_request_is_read(dataplane):
    calls: list = []
    with pytest.raises(NotFound):
        asyncio.run(dataplane.predict("nope", None, _reader("text/csv", b"a,b\n1,2\n", calls=calls)))
    assert calls == []


def test_bad_inputs_are_400_naming_them_and_count_as_failures(dataplane):
    before = _counts(dataplane)
    with pytest.raises(InvalidInput, match=r"<body>\[1\] \(line 3\): column b: 'x' is not a number"):
        asyncio.run(dataplane.predict("rows", None, _reader("text/csv", b"a,b\n1,2\n3,x\n")))

    async def refuse(manifest: dict) -> Upload:
        raise UsageError("an empty request body; send one of: ...")

    with pytest.raises(InvalidInput, match="^an empty request body"):  # the transport's words, unchanged
        asyncio.run(dataplane.predict("rows", None, refuse))
    after = _counts(dataplane)
    failures = ("nv_inference_request_failure_total", "OTHER")
    assert after[failures] - before.get(failures, 0) == 2
    ok = ("nv_inference_request_success_total", "")
    assert after.get(ok, 0) == before.get(ok, 0)


def test_one_predict_request_counts_once_however_many_rows(dataplane):
    before = _counts(dataplane)
    rows = b"a,b\n" + b"".join(b"%d,%d\n" % (i, i + 1) for i in range(50))
    doc = asyncio.run(dataplane.predict("rows", None, _reader("text/csv", rows)))
    assert len(doc["predictions"]) == 50
    after = _counts(dataplane)
    ok = ("nv_inference_request_success_total", "")
    assert after[ok] - before.get(ok, 0) == 1
    assert after[("nv_inference_count_total", "")] - before.get(("nv_inference_count_total", ""), 0) == 50
