"""Property tests against the real REST app, served by uvicorn on loopback and spoken to over real HTTP.

The model is a tiny ONNX graph built here: input "input" FP32 [-1, 4] -> "logits" = input @ W (4x3),
"probs" = softmax(logits). Whatever a client sends, the server must answer a 4xx with {"error": ...} (never a
5xx, never a hang), and keep answering well-formed requests with the right numbers afterwards.
"""

from __future__ import annotations

import http.client
import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import file_onnx_model, serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper, numpy_helper

from maasctl.repository import ModelRepository
from maasctl.serve.dataplane import DataPlane

MAX_BODY = 1024
W = (np.arange(12, dtype=np.float32).reshape(4, 3) / 7 - 0.5).astype(np.float32)
INFER = "/v2/models/tiny/infer"
HEADER = "Inference-Header-Content-Length"

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- the model and the server ----------------------------------------------------------------------------------


def write_tiny_model(repo: Path) -> None:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3]),
        ],
        initializer=[numpy_helper.from_array(W, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    file_onnx_model(
        repo,
        "tiny",
        model,
        task="classification",
        inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        outputs=[{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
        labels=["a", "b", "c"],
    )


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    repo = tmp_path_factory.mktemp("serve") / "repo"
    write_tiny_model(repo)
    dataplane = DataPlane(ModelRepository(repo), "cpu")
    dataplane.load_all()
    assert dataplane.ready, dataplane.repository_index()

    with serving(dataplane, max_body_bytes=MAX_BODY) as base:  # real uvicorn on a loopback port, in a thread
        yield int(base.rsplit(":", 1)[1])


def send(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def assert_client_error(status: int, headers: dict[str, str], body: bytes) -> str:
    """A 4xx with a JSON body {"error": "<message>"}; returns the message."""
    assert 400 <= status < 500, (status, body[:300])
    assert headers["content-type"].startswith("application/json")
    doc = json.loads(body)
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], doc
    return doc["error"]


def expected_outputs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = x.astype(np.float64) @ W.astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return logits, e / e.sum(axis=1, keepdims=True)


def read_outputs(headers: dict[str, str], body: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A 200 response as a client reads it: the JSON document and each FP32 output, from JSON or binary data."""
    n = int(headers[HEADER.lower()]) if HEADER.lower() in headers else len(body)
    doc, tail = json.loads(body[:n]), body[n:]
    outputs = {}
    for out in doc["outputs"]:
        assert out["datatype"] == "FP32" and len(out["shape"]) == 2 and out["shape"][1] == 3, out
        if "data" in out:
            values = np.array(out["data"], dtype=np.float32)
        else:
            size = out["parameters"]["binary_data_size"]
            values, tail = np.frombuffer(tail[:size], dtype="<f4"), tail[size:]
        outputs[out["name"]] = values.reshape(out["shape"])
    assert tail == b"", "binary data that belongs to no output"
    return doc, outputs


def assert_right_numbers(x: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
    assert outputs, "no outputs"
    logits, probs = expected_outputs(x)
    if "logits" in outputs:
        np.testing.assert_allclose(outputs["logits"], logits, rtol=1e-4, atol=1e-3)
    if "probs" in outputs:
        np.testing.assert_allclose(outputs["probs"], probs, rtol=1e-4, atol=1e-5)


def assert_answers(port: int, x: np.ndarray, binary: bool) -> None:
    """A well-formed request, in JSON or in binary, gets 200 and the numbers numpy computes."""
    item: dict[str, Any] = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
    if binary:
        raw = x.astype("<f4").tobytes()
        item["parameters"] = {"binary_data_size": len(raw)}
        doc = {"id": "check", "inputs": [item], "parameters": {"binary_data_output": True}}
        header = json.dumps(doc).encode()
        status, headers, body = send(port, "POST", INFER, header + raw, {HEADER: str(len(header))})
    else:
        item["data"] = x.tolist()
        status, headers, body = send(port, "POST", INFER, json.dumps({"id": "check", "inputs": [item]}).encode())
    assert status == 200, body[:300]
    doc, outputs = read_outputs(headers, body)
    assert doc["model_name"] == "tiny" and doc["model_version"] == "1" and doc["id"] == "check"
    assert sorted(outputs) == ["logits", "probs"]
    assert all(v.shape == (len(x), 3) for v in outputs.values())
    assert_right_numbers(x, outputs)


# --- strategies ------------------------------------------------------------------------------------------------

batches = st.integers(1, 4).flatmap(
    lambda n: arrays(np.float32, (n, 4), elements=st.floats(-100, 100, width=32, allow_subnormal=False))
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)

# Input objects that look right at a glance: each field is often the right value, else something near it or
# any JSON. The datatype is kept hashable: a list or an object there is a known 500
# (see test_protocol.py::test_datatype_that_is_not_a_string_is_invalid_input).
numbers = st.floats(-10, 10) | st.integers(-10, 10)


def mostly(right: Any, wrong: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`right` three times in four, else a draw from `wrong`."""
    return st.integers(0, 3).flatmap(lambda i: st.just(right) if i else wrong)


plausible_inputs = st.fixed_dictionaries(
    {
        "name": mostly("input", st.sampled_from(["inputs", "Input", "logits", ""]) | json_scalars),
        "datatype": mostly(
            "FP32", st.sampled_from(["FP64", "FP16", "INT32", "BYTES", "BOOL", "fp32", "FLOAT"]) | json_scalars
        ),
        "shape": st.integers(0, 3).map(lambda n: [n, 4]) | st.lists(st.integers(-2, 6), max_size=3) | json_values,
    },
    optional={
        "data": st.lists(numbers, max_size=12) | st.lists(st.lists(numbers, max_size=5), max_size=4) | json_values,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-4, 64) | json_scalars})
        | json_values,
    },
)
plausible_docs = st.fixed_dictionaries(
    {
        "inputs": mostly(None, json_values).flatmap(
            lambda v: st.lists(plausible_inputs, min_size=1, max_size=2) if v is None else st.just(v)
        )
    },
    optional={
        "id": st.text(max_size=8) | json_values,
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["logits", "probs", "nope"])}, optional={"parameters": json_values}
            ),
            max_size=3,
        )
        | json_values,
        "parameters": st.fixed_dictionaries({}, optional={"binary_data_output": json_scalars}) | json_values,
    },
)


def assert_accidentally_right(doc: dict[str, Any], headers: dict[str, str], body: bytes) -> None:
    """A generated doc got 200: it must then have been a request for "input" FP32 [n, 4], answered correctly."""
    (item,) = doc["inputs"]
    assert item["name"] == "input" and item["datatype"] == "FP32", doc
    n, four = item["shape"]
    assert four == 4, doc
    if "binary_data_size" in (item.get("parameters") or {}):  # no binary part was sent: only an empty tensor fits
        x = np.zeros((0, 4))
    else:
        x = np.asarray(item["data"], dtype=np.float64).reshape(n, 4)
    _, outputs = read_outputs(headers, body)
    assert_right_numbers(x, outputs)


# A valid request and one defect each: every mutation alone must turn it into a 400.
def _mutations() -> dict[str, Any]:
    def item(doc: dict[str, Any]) -> dict[str, Any]:
        return doc["inputs"][0]

    return {
        "unknown name": lambda d: item(d).update(name="x"),
        "wrong datatype": lambda d: item(d).update(datatype="FP64"),
        "unknown datatype": lambda d: item(d).update(datatype="FLOAT32"),
        "wrong inner dim": lambda d: item(d).update(shape=[item(d)["shape"][0] * 2, 2]),
        "wrong rank": lambda d: item(d).update(shape=[item(d)["shape"][0] * 4]),
        "negative dim": lambda d: item(d).update(shape=[-1, 4]),
        "one value short": lambda d: item(d).update(data=np.ravel(item(d)["data"]).tolist()[:-1]),
        "one value extra": lambda d: item(d).update(data=np.ravel(item(d)["data"]).tolist() + [1.0]),
        "ragged": lambda d: item(d).update(data=item(d)["data"] + [[1.0, 2.0]]),
        "strings": lambda d: item(d).update(data=[str(v) for v in np.ravel(item(d)["data"])]),
        "no data": lambda d: item(d).pop("data"),
        "binary size without binary": lambda d: item(d).update(parameters={"binary_data_size": 16}),
        "input twice": lambda d: d["inputs"].append(dict(item(d))),
        "no inputs": lambda d: d.update(inputs=[]),
        "inputs not a list": lambda d: d.update(inputs=item(d)),
        "id not a string": lambda d: d.update(id=5),
        "unknown output": lambda d: d.update(outputs=[{"name": "nope"}]),
        "outputs not a list": lambda d: d.update(outputs={"name": "logits"}),
        "parameters not an object": lambda d: d.update(parameters=[True]),
    }


MUTATIONS = _mutations()


# --- properties ------------------------------------------------------------------------------------------------


@FUZZ
@given(body=st.binary(max_size=600), x=batches, binary=st.booleans())
def test_random_bytes_get_a_4xx_and_the_server_keeps_answering(
    port: int, body: bytes, x: np.ndarray, binary: bool
) -> None:
    assert_client_error(*send(port, "POST", INFER, body))
    assert_answers(port, x, binary)


@FUZZ
@given(value=json_values, x=batches, binary=st.booleans())
def test_random_json_values_get_a_4xx(port: int, value: Any, x: np.ndarray, binary: bool) -> None:
    assert_client_error(*send(port, "POST", INFER, json.dumps(value).encode()))
    assert_answers(port, x, binary)


@FUZZ
@given(doc=plausible_docs, x=batches, binary=st.booleans())
def test_plausible_but_wrong_inputs_get_a_4xx(port: int, doc: dict[str, Any], x: np.ndarray, binary: bool) -> None:
    status, headers, body = send(port, "POST", INFER, json.dumps(doc).encode())
    if status == 200:  # the generator built a correct request by chance
        assert_accidentally_right(doc, headers, body)
    else:
        assert_client_error(status, headers, body)
    assert_answers(port, x, binary)


@FUZZ
@given(x=batches, mutation=st.sampled_from(sorted(MUTATIONS)), binary=st.booleans())
def test_each_single_defect_in_a_valid_request_gets_a_400(
    port: int, x: np.ndarray, mutation: str, binary: bool
) -> None:
    doc: dict[str, Any] = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}]
    }
    MUTATIONS[mutation](doc)
    status, headers, body = send(port, "POST", INFER, json.dumps(doc).encode())
    assert status == 400, (mutation, body[:300])
    assert_client_error(status, headers, body)
    assert_answers(port, x, binary)


@FUZZ
@given(
    x=batches,
    with_binary=st.booleans(),
    header=st.integers(-3, 400).map(str)
    | st.text(alphabet=string.ascii_letters + string.punctuation + " ", min_size=1, max_size=12),
)
def test_random_header_lengths_get_a_4xx_unless_they_happen_to_be_right(
    port: int, x: np.ndarray, with_binary: bool, header: str
) -> None:
    raw = x.astype("<f4").tobytes()
    item: dict[str, Any] = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
    item.update({"parameters": {"binary_data_size": len(raw)}} if with_binary else {"data": x.tolist()})
    json_part = json.dumps({"inputs": [item]}).encode()
    body = json_part + raw if with_binary else json_part

    status, headers, answer = send(port, "POST", INFER, body, {HEADER: header})
    right = header.strip() == str(len(json_part)) or (header.strip() == "0" and len(body) % 16 == 0)  # 0: a raw request
    if right:
        assert status == 200, answer[:300]
    else:
        assert_client_error(status, headers, answer)
    assert_answers(port, x, not with_binary)


# --- fixed cases -----------------------------------------------------------------------------------------------


def test_requested_output_in_binary_only(port: int) -> None:
    x = np.array([[1, 2, 3, 4], [-1, 0, 0.5, 2]], dtype=np.float32)
    doc = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4], "data": x.ravel().tolist()}],
        "outputs": [{"name": "probs", "parameters": {"binary_data": True}}],
    }
    status, headers, body = send(port, "POST", INFER, json.dumps(doc).encode())
    assert status == 200
    assert headers["content-type"] == "application/octet-stream"
    n = int(headers[HEADER.lower()])
    (out,) = json.loads(body[:n])["outputs"]
    assert out["name"] == "probs" and out["parameters"] == {"binary_data_size": 24} and "data" not in out
    _, outputs = read_outputs(headers, body)
    assert list(outputs) == ["probs"]
    assert_right_numbers(x, outputs)


@pytest.mark.parametrize(
    "path", ["/v2/models/nope/infer", "/v2/models/tiny/versions/2/infer", "/v2/models/nope", "/v2/models/nope/ready"]
)
def test_unknown_model_or_version_is_404(port: int, path: str) -> None:
    method = "POST" if path.endswith("/infer") else "GET"
    body = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    ).encode()
    status, headers, answer = send(port, method, path, body if method == "POST" else None)
    assert status == 404
    assert_client_error(status, headers, answer)


def test_body_over_the_limit_is_413(port: int) -> None:
    body = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4, "pad": "x" * MAX_BODY}]}
    ).encode()
    status, headers, answer = send(port, "POST", INFER, body)
    assert status == 413
    assert str(MAX_BODY) in assert_client_error(status, headers, answer)
    assert_answers(port, np.ones((1, 4), np.float32), binary=False)


def test_chunked_body_over_the_limit_is_413(port: int) -> None:
    """Without a Content-Length the limit is enforced while reading the stream."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", INFER, body=iter([b"{" + b" " * 600, b" " * 600 + b"}"]), encode_chunked=True)
        response = conn.getresponse()
        status, headers, answer = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()
    assert status == 413
    assert_client_error(status, headers, answer)


@pytest.mark.parametrize("path", [INFER, "/v2/models/tiny/versions/1/infer"])
def test_get_on_an_infer_route_is_405(port: int, path: str) -> None:
    status, headers, body = send(port, "GET", path)
    assert status == 405
    assert headers.get("allow") == "POST"  # RFC 9110: a 405 names the methods that would work
    assert_client_error(status, headers, body)


def test_health_and_metadata(port: int) -> None:
    assert send(port, "GET", "/v2/health/live")[0] == 200
    assert send(port, "GET", "/v2/health/ready")[0] == 200
    status, _, body = send(port, "GET", "/v2")
    assert status == 200 and "binary_tensor_data" in json.loads(body)["extensions"]
    status, _, body = send(port, "GET", "/v2/models/tiny")
    meta = json.loads(body)
    assert status == 200 and meta["platform"] == "onnx_onnxv1" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probs"]
