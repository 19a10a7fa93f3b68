"""The Open Inference Protocol codec: JSON tensors, the binary tensor data extension, and the errors a client sees.

No HTTP and no model here: requests are decoded against small made-up signatures, responses are encoded
from arrays, and every check is on what a client would send or read back.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import orjson
import pytest

from maasctl.protocol.errors import InvalidInput
from maasctl.protocol.v2 import DATATYPES, InferResponse, TensorSignature, decode_request, encode_response
from maasctl.runtime.session import TensorSpec

NUMERIC = [dt for dt in DATATYPES if dt != "BYTES"]
HEADER = "Inference-Header-Content-Length"


# --- helpers ---------------------------------------------------------------------------------------------------


def signature(*inputs: tuple[str, str, tuple[int, ...]], outputs: tuple[str, ...] = ("y",)) -> TensorSignature:
    """TensorSignature from (name, datatype, shape) triples; outputs are FP32 [-1] (the codec only needs names)."""
    return TensorSignature([TensorSpec(*t) for t in inputs], [TensorSpec(o, "FP32", (-1,)) for o in outputs])


def json_request(doc: Any) -> tuple[bytes, None]:
    return orjson.dumps(doc), None


def binary_request(doc: Any, *chunks: bytes) -> tuple[bytes, str]:
    """JSON header followed by raw tensor bytes, with the header length a client sends."""
    header = orjson.dumps(doc)
    return header + b"".join(chunks), str(len(header))


def split_response(body: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], bytes]:
    """What a client does with a response: JSON part and binary part, by Inference-Header-Content-Length."""
    if HEADER not in headers:
        return orjson.loads(body), b""
    n = int(headers[HEADER])
    return orjson.loads(body[:n]), body[n:]


def le_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def bytes_tensor(*items: bytes) -> bytes:
    """BYTES in binary: each element is a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def extremes(datatype: str) -> np.ndarray:
    """A 2x3 tensor of `datatype` with its edge values (min, max, zero, one, a fraction for floats)."""
    dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, 0, info.max], [1, int(info.max) - 1, int(info.min) + 1]], dtype=dtype)
    info = np.finfo(dtype)
    return np.array([[info.min, -0.5, info.max], [info.tiny, 1 / 3, 0.0]], dtype=dtype)


JSON_DATATYPES = NUMERIC


# --- JSON tensors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "datatype, flat",
    [
        ("FP32", [0.5, -1.0, 2.0, 3.25, 4.0, -5.5]),
        ("INT64", [1, -2, 3, 4, -5, 6]),
        ("BOOL", [True, False, True, True, False, False]),
    ],
)
def test_flat_and_nested_json_data_give_the_same_array(datatype: str, flat: list[Any]) -> None:
    sig = signature(("x", datatype, (-1, 3)))
    nested = [flat[:3], flat[3:]]
    arrays = []
    for data in (flat, nested):
        request = decode_request(
            *json_request({"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 3], "data": data}]}), sig
        )
        arrays.append(request.inputs["x"])
    assert arrays[0].shape == arrays[1].shape == (2, 3)
    assert arrays[0].dtype == arrays[1].dtype == DATATYPES[datatype]
    np.testing.assert_array_equal(arrays[0], arrays[1])
    np.testing.assert_array_equal(arrays[0], np.array(nested, dtype=DATATYPES[datatype]))


@pytest.mark.parametrize("datatype", JSON_DATATYPES)
def test_every_numeric_datatype_round_trips_through_json(datatype: str) -> None:
    values = extremes(datatype)
    sig = signature(("x", datatype, (-1, 3)))
    doc = {"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 3], "data": values.ravel().tolist()}]}

    decoded = decode_request(*json_request(doc), sig).inputs["x"]
    assert decoded.dtype == DATATYPES[datatype]
    np.testing.assert_array_equal(decoded, values)

    body, headers = encode_response(InferResponse("m", "1", {"y": decoded}))
    assert headers == {}
    (out,) = orjson.loads(body)["outputs"]
    assert out["name"] == "y" and out["datatype"] == datatype and out["shape"] == [2, 3]
    np.testing.assert_array_equal(np.array(out["data"], dtype=DATATYPES[datatype]).reshape(2, 3), values)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_every_numeric_datatype_round_trips_through_binary(datatype: str) -> None:
    values = extremes(datatype)
    raw = le_bytes(values)
    assert len(raw) == values.size * DATATYPES[datatype].itemsize  # BOOL is one byte, no padding anywhere
    sig = signature(("x", datatype, (-1, 3)))
    doc = {
        "inputs": [{"name": "x", "datatype": datatype, "shape": [2, 3], "parameters": {"binary_data_size": len(raw)}}]
    }

    decoded = decode_request(*binary_request(doc, raw), sig).inputs["x"]
    assert decoded.dtype == DATATYPES[datatype]
    np.testing.assert_array_equal(decoded, values)

    body, headers = encode_response(InferResponse("m", "1", {"y": decoded}, binary_outputs={"y"}))
    header, tail = split_response(body, headers)
    (out,) = header["outputs"]
    assert out["datatype"] == datatype and out["shape"] == [2, 3]
    assert "data" not in out
    assert out["parameters"]["binary_data_size"] == len(raw)
    assert tail == raw


def test_bytes_json_round_trip() -> None:
    sig = signature(("s", "BYTES", (-1,)))
    doc = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [3], "data": ["abc", "", "héllo"]}]}
    decoded = decode_request(*json_request(doc), sig).inputs["s"]
    assert decoded.tolist() == [b"abc", b"", "héllo".encode()]

    (out,) = orjson.loads(encode_response(InferResponse("m", "1", {"y": decoded}))[0])["outputs"]
    assert out["datatype"] == "BYTES" and out["shape"] == [3]
    assert out["data"] == ["abc", "", "héllo"]


def test_bytes_binary_uses_a_little_endian_length_prefix_per_element() -> None:
    long = bytes(range(256)) + b"!"  # 257 bytes: prefix 01 01 00 00, which big-endian would read as 16842752
    raw = b"\x03\x00\x00\x00abc" + b"\x00\x00\x00\x00" + b"\x01\x01\x00\x00" + long
    assert raw == bytes_tensor(b"abc", b"", long)
    sig = signature(("s", "BYTES", (-1,)))
    doc = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": len(raw)}}]}

    decoded = decode_request(*binary_request(doc, raw), sig).inputs["s"]
    assert decoded.tolist() == [b"abc", b"", long]

    body, headers = encode_response(InferResponse("m", "1", {"y": decoded}, binary_outputs={"y"}))
    header, tail = split_response(body, headers)
    assert header["outputs"][0]["datatype"] == "BYTES"
    assert header["outputs"][0]["parameters"]["binary_data_size"] == len(raw)
    assert tail == raw


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"\x03\x00\x00", "'s'.*truncated"),
        (b"\x05\x00\x00\x00abc", "'s'.*overruns"),
        (b"\x00\x00\x00\x03abc", "'s'.*overruns"),
    ],
    ids=["truncated-prefix", "element-overrun", "big-endian-prefix"],
)
def test_malformed_bytes_binary_is_rejected(raw: bytes, match: str) -> None:
    sig = signature(("s", "BYTES", (-1,)))
    doc = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(raw)}}]}
    with pytest.raises(InvalidInput, match=match):
        decode_request(*binary_request(doc, raw), sig)


def test_json_and_binary_inputs_mix_in_one_request() -> None:
    sig = signature(("a", "FP32", (-1, 2)), ("b", "INT16", (-1,)), ("c", "UINT8", (2,)))
    a = np.array([[1.5, -2.0]], dtype=np.float32)
    c = np.array([250, 7], dtype=np.uint8)
    doc = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}},
            {"name": "b", "datatype": "INT16", "shape": [3], "data": [-32768, 0, 32767]},
            {"name": "c", "datatype": "UINT8", "shape": [2], "parameters": {"binary_data_size": 2}},
        ]
    }
    request = decode_request(*binary_request(doc, le_bytes(a), le_bytes(c)), sig)
    np.testing.assert_array_equal(request.inputs["a"], a)
    np.testing.assert_array_equal(request.inputs["b"], np.array([-32768, 0, 32767], dtype=np.int16))
    np.testing.assert_array_equal(request.inputs["c"], c)


def test_raw_request_with_header_length_zero_fills_the_single_input() -> None:
    sig = signature(("x", "FP32", (-1, 3)))
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    request = decode_request(le_bytes(values), "0", sig)
    assert list(request.inputs) == ["x"]
    assert request.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(request.inputs["x"], values)


# --- errors ----------------------------------------------------------------------------------------------------

# Two inputs, so that "missing input" means something: x FP32 [-1, 3] and k INT16 [-1].
SIG = signature(("x", "FP32", (-1, 3)), ("k", "INT16", (-1,)), outputs=("y", "z"))
X = {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}
K = {"name": "k", "datatype": "INT16", "shape": [2], "data": [7, 8]}
X_BYTES = le_bytes(np.arange(6, dtype=np.float32))


def x_with(**changes: Any) -> dict[str, Any]:
    """X with some keys changed; a key set to None is left out."""
    item = {**X, **changes}
    return {key: value for key, value in item.items() if value is not None}


def binary_x(size: int, payload: bytes) -> tuple[bytes, str]:
    return binary_request({"inputs": [x_with(data=None, parameters={"binary_data_size": size}), K]}, payload)


ERRORS = [
    # (id, (body, header length), message pattern)
    ("wrong-shape", json_request({"inputs": [x_with(shape=[3, 2]), K]}), r"input 'x': shape \[3, 2\] does not match"),
    ("wrong-rank", json_request({"inputs": [x_with(shape=[6]), K]}), r"input 'x': shape \[6\] does not match"),
    ("negative-dim", json_request({"inputs": [x_with(shape=[-1, 3]), K]}), r"input 'x': shape must be"),
    ("non-integer-dim", json_request({"inputs": [x_with(shape=[2.0, 3]), K]}), r"input 'x': shape must be"),
    ("wrong-datatype", json_request({"inputs": [x_with(datatype="FP64"), K]}), r"input 'x': datatype FP64 given.*FP32"),
    (
        "unknown-datatype",
        json_request({"inputs": [x_with(datatype="FLOAT"), K]}),
        r"input 'x': unknown datatype 'FLOAT'",
    ),
    ("unknown-input", json_request({"inputs": [x_with(name="q"), K]}), r"unknown input 'q'"),
    ("missing-input", json_request({"inputs": [X]}), r"missing input\(s\) k"),
    ("input-twice", json_request({"inputs": [X, K, X]}), r"input 'x' is given twice"),
    ("ragged", json_request({"inputs": [x_with(data=[[1, 2, 3], [4, 5]]), K]}), r"input 'x': .*ragged"),
    (
        "too-few-values",
        json_request({"inputs": [x_with(data=[1, 2, 3, 4, 5]), K]}),
        r"input 'x': 5 values for shape \[2, 3\]",
    ),
    (
        "too-many-values",
        json_request({"inputs": [x_with(data=[[1, 2, 3]] * 3), K]}),
        r"input 'x': 9 values for shape \[2, 3\]",
    ),
    (
        "strings-for-fp32",
        json_request({"inputs": [x_with(data=["1", "2", "3", "4", "5", "6"]), K]}),
        r"input 'x': .*numbers",
    ),
    ("no-data", json_request({"inputs": [x_with(data=None), K]}), r"input 'x': no 'data'"),
    (
        "int-overflow",
        json_request({"inputs": [X, {**K, "data": [7, 40000]}]}),
        r"input 'k': values out of range for INT16",
    ),
    (
        "float-for-int",
        json_request({"inputs": [X, {**K, "data": [7, 8.5]}]}),
        r"input 'k': INT16 data must be integers",
    ),
    ("binary-size-overrun", binary_x(24, X_BYTES[:20]), r"input 'x': binary_data_size 24 overruns"),
    (
        "binary-size-without-binary",
        json_request({"inputs": [x_with(data=None, parameters={"binary_data_size": 24}), K]}),
        r"input 'x': binary_data_size",
    ),
    ("binary-size-negative", binary_x(-4, X_BYTES), r"input 'x': binary_data_size -4"),
    ("binary-partial-value", binary_x(23, X_BYTES[:23]), r"input 'x': 23 bytes is not a whole number of FP32"),
    ("binary-wrong-count", binary_x(20, X_BYTES[:20]), r"input 'x': binary data holds 5 values"),
    ("binary-trailing-bytes", binary_x(24, X_BYTES + b"\x00" * 4), r"4 bytes of binary data .* belong to none"),
    (
        "header-not-integer",
        (orjson.dumps({"inputs": [X, K]}), "twelve"),
        r"Inference-Header-Content-Length must be a non-negative integer",
    ),
    (
        "header-negative",
        (orjson.dumps({"inputs": [X, K]}), "-1"),
        r"Inference-Header-Content-Length must be a non-negative integer, got .-1.",
    ),
    (
        "header-past-body",
        (b'{"inputs": []}', "15"),
        r"Inference-Header-Content-Length 15 is outside the body's 14 bytes",
    ),
    ("header-cuts-json", (orjson.dumps({"inputs": [X, K]}), "10"), r"not valid JSON"),
    ("raw-two-inputs", (X_BYTES, "0"), r"raw binary request .* exactly one input"),
    ("not-json", (b"inputs: x", None), r"not valid JSON"),
    ("not-an-object", json_request([X, K]), r"JSON object"),
    ("inputs-empty", json_request({"inputs": []}), r"'inputs' must be a non-empty list"),
    ("input-not-object", json_request({"inputs": [X, "k"]}), r"inputs\[1\] must be an object"),
    ("unknown-output", json_request({"inputs": [X, K], "outputs": [{"name": "w"}]}), r"unknown output 'w'"),
    ("id-not-string", json_request({"id": 7, "inputs": [X, K]}), r"'id' must be a string"),
    (
        "parameters-not-object",
        json_request({"inputs": [x_with(parameters=[1]), K]}),
        r"input 'x' parameters must be an object",
    ),
]


@pytest.mark.parametrize("request_, match", [pytest.param(r, m, id=i) for i, r, m in ERRORS])
def test_malformed_requests_raise_invalid_input_naming_the_problem(
    request_: tuple[bytes, str | None], match: str
) -> None:
    with pytest.raises(InvalidInput, match=match) as info:
        decode_request(*request_, SIG)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "datatype, value",
    [
        ("UINT8", 300),
        ("UINT8", -1),
        ("INT8", 128),
        ("INT8", -129),
        ("UINT16", 65536),
        ("INT32", 2**31),
        ("INT64", 2**63),
        ("UINT64", -1),
    ],
)
def test_integers_out_of_range_are_rejected_not_wrapped(datatype: str, value: int) -> None:
    doc = {"inputs": [{"name": "n", "datatype": datatype, "shape": [2], "data": [1, value]}]}
    with pytest.raises(InvalidInput, match=f"input 'n': .*{datatype}"):
        decode_request(*json_request(doc), signature(("n", datatype, (-1,))))


@pytest.mark.parametrize("data", [[1, 0], [0.0, 1.0], ["true", "false"]])
def test_bool_data_must_be_true_or_false(data: list[Any]) -> None:
    doc = {"inputs": [{"name": "b", "datatype": "BOOL", "shape": [2], "data": data}]}
    with pytest.raises(InvalidInput, match="input 'b': "):
        decode_request(*json_request(doc), signature(("b", "BOOL", (-1,))))


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"\x00" * 8, r"raw request of 2 FP32 values does not fill whole x items"),
        (b"\x00" * 10, r"input 'x': 10 bytes is not a whole number of FP32 values"),
    ],
    ids=["partial-item", "partial-value"],
)
def test_raw_request_must_hold_whole_items(payload: bytes, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        decode_request(payload, "0", signature(("x", "FP32", (-1, 3))))


@pytest.mark.parametrize("datatype", [["FP32"], {"FP32": 1}], ids=["list", "object"])
def test_datatype_that_is_not_a_string_is_invalid_input(datatype: Any) -> None:
    with pytest.raises(InvalidInput, match="input 'x': "):
        decode_request(*json_request({"inputs": [x_with(datatype=datatype), K]}), SIG)


@pytest.mark.parametrize("shape, values", [((4,), 3), ((2, 4), 12)], ids=["fixed-1d", "fixed-batch"])
def test_raw_request_is_checked_against_fixed_dimensions(shape: tuple[int, ...], values: int) -> None:
    payload = le_bytes(np.zeros(values, dtype=np.float32))
    with pytest.raises(InvalidInput, match="x"):
        decode_request(payload, "0", signature(("x", "FP32", shape)))


# --- requested outputs, binary outputs, id ---------------------------------------------------------------------

Y = np.array([[1.0, 2.0]], dtype=np.float32)
Z = np.array([[3, 4, 5]], dtype=np.int64)


def test_all_outputs_in_json_when_none_are_requested() -> None:
    request = decode_request(*json_request({"inputs": [X, K]}), SIG)
    assert request.outputs is None  # the dataplane runs every output
    assert request.binary_outputs == set()


def test_requested_outputs_restrict_the_response() -> None:
    request = decode_request(*json_request({"inputs": [X, K], "outputs": [{"name": "z"}]}), SIG)
    assert request.outputs == ["z"]
    assert request.binary_outputs == set()

    body, headers = encode_response(InferResponse("m", "1", {"z": Z}))
    assert headers == {}
    assert [o["name"] for o in orjson.loads(body)["outputs"]] == ["z"]


def test_binary_data_output_puts_every_output_after_the_json() -> None:
    request = decode_request(*json_request({"inputs": [X, K], "parameters": {"binary_data_output": True}}), SIG)
    assert request.binary_outputs == {"y", "z"}

    body, headers = encode_response(InferResponse("m", "1", {"y": Y, "z": Z}, binary_outputs=request.binary_outputs))
    header, tail = split_response(body, headers)
    assert headers[HEADER] == str(len(orjson.dumps(header)))
    y, z = header["outputs"]
    assert "data" not in y and "data" not in z
    assert y["parameters"]["binary_data_size"] == 8 and z["parameters"]["binary_data_size"] == 24
    assert tail == le_bytes(Y) + le_bytes(Z)  # concatenated in the order the outputs appear in the JSON


def test_per_output_binary_data_chooses_output_by_output() -> None:
    doc = {"inputs": [X, K], "outputs": [{"name": "y"}, {"name": "z", "parameters": {"binary_data": True}}]}
    request = decode_request(*json_request(doc), SIG)
    assert request.outputs == ["y", "z"]
    assert request.binary_outputs == {"z"}

    body, headers = encode_response(InferResponse("m", "1", {"y": Y, "z": Z}, binary_outputs=request.binary_outputs))
    header, tail = split_response(body, headers)
    y, z = header["outputs"]
    assert y["data"] == [1.0, 2.0] and "parameters" not in y
    assert "data" not in z and z["parameters"]["binary_data_size"] == 24
    assert np.frombuffer(tail, dtype="<i8").tolist() == [3, 4, 5]


def test_per_output_binary_data_false_overrides_binary_data_output() -> None:
    doc = {
        "inputs": [X, K],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "y", "parameters": {"binary_data": False}}, {"name": "z"}],
    }
    assert decode_request(*json_request(doc), SIG).binary_outputs == {"z"}


@pytest.mark.parametrize("request_id", ["req-42", ""])
def test_id_is_echoed(request_id: str) -> None:
    request = decode_request(*json_request({"id": request_id, "inputs": [X, K]}), SIG)
    assert request.id == request_id
    for binary in (set(), {"y"}):
        body, headers = encode_response(InferResponse("m", "1", {"y": Y}, request.id, binary))
        assert split_response(body, headers)[0]["id"] == request_id


def test_no_id_in_the_response_when_the_request_has_none() -> None:
    request = decode_request(*json_request({"inputs": [X, K]}), SIG)
    body, _ = encode_response(InferResponse("m", "3", {"y": Y}, request.id))
    doc = orjson.loads(body)
    assert "id" not in doc
    assert doc["model_name"] == "m" and doc["model_version"] == "3"


@pytest.mark.parametrize("data", ["1.0", "[1.0]", "[[1.0]]", "[[], [2]]"])
def test_an_empty_shape_takes_no_values(data):
    """Found by the fuzz suite: shape [0, 4] with values once decoded as an empty tensor and got 200."""
    signature = TensorSignature.from_manifest(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}], "outputs": []}
    )
    body = b'{"inputs": [{"name": "input", "shape": [0, 4], "datatype": "FP32", "data": %s}]}' % data.encode()
    with pytest.raises(InvalidInput, match=r"values for shape \[0, 4\] \(0 expected\)"):
        decode_request(body, None, signature)


# --- the common request (one floating-point input, a flat list of numbers): decode_request's fast path -------------

ONE = signature(("x", "FP32", (-1, 2)))


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_the_common_request_decodes_to_the_values_sent(datatype: str) -> None:
    data = [1, -2.5, 3e-3, 65504.0]  # ints and floats; 65504 is FP16's largest value
    doc = {"id": "r1", "inputs": [{"name": "x", "shape": [2, 2], "datatype": datatype, "data": data}]}
    request = decode_request(*json_request(doc), signature(("x", datatype, (-1, 2))))
    x = request.inputs["x"]
    assert x.dtype == DATATYPES[datatype] and x.shape == (2, 2)
    np.testing.assert_array_equal(x, np.array(data, dtype=DATATYPES[datatype]).reshape(2, 2))
    assert (request.id, request.outputs, request.binary_outputs, request.parameters) == ("r1", None, set(), None)


@pytest.mark.parametrize(
    "datatype, data, match",
    [
        ("FP16", [1.0, 70000.0, 3.0, 4.0], r"values out of range for FP16"),  # past 65504
        ("FP32", [3.4e38, 3.4e38, 1.0, 1.0], None),  # each within range, though the norm of all of them is not
        ("FP64", [1e308, 1e308, -1e308, 1.0], None),  # the norm of these is beyond any float
    ],
)
def test_values_near_the_types_limit_decode_as_the_general_path_decodes_them(datatype, data, match) -> None:
    doc = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": datatype, "data": data}]}
    one = signature(("x", datatype, (-1, 2)))
    if match is not None:
        with pytest.raises(InvalidInput, match=match):
            decode_request(orjson.dumps(doc), None, one)
        return
    x = decode_request(orjson.dumps(doc), None, one).inputs["x"]
    np.testing.assert_array_equal(x, np.array(data, dtype=DATATYPES[datatype]).reshape(2, 2))


@pytest.mark.parametrize(
    "data, match",
    [
        ([1.0, True, 3.0, 4.0], r"input 'x': data must be numbers for datatype FP32"),
        ([1.0, "2", 3.0, 4.0], r"input 'x': data must be numbers for datatype FP32"),
        ([1.0, None, 3.0, 4.0], r"input 'x': data must be numbers for datatype FP32"),
        ([1.0, 1e39, 3.0, 4.0], r"input 'x': values out of range for FP32"),
        ([1.0, 10**39, 3.0, 4.0], r"input 'x': values out of range for FP32"),  # an integer past 64 bits
        ([1.0, 2.0, 3.0], r"input 'x': 3 values for shape \[2, 2\]"),
    ],
)
def test_a_flat_list_the_common_path_cannot_take_gets_the_general_paths_error(data: list, match: str) -> None:
    doc = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": data}]}
    with pytest.raises(InvalidInput, match=match):
        decode_request(json.dumps(doc).encode(), None, ONE)  # json: orjson writes no integer past 64 bits
