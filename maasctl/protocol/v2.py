"""Decode infer requests and encode infer responses: JSON tensors and the binary tensor data extension.

A request becomes `InferRequest` (numpy arrays by input name); an `InferResponse` becomes bytes plus the
headers to send. Shapes and datatypes are checked against the model's signature here, so the runtime only
ever sees well-formed tensors.
"""

from __future__ import annotations

import functools
import itertools
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from maasctl.protocol.errors import InvalidInput

# The binary tensor data extension's header: how many bytes of the body are the JSON part. HTTP header names are
# case-insensitive; both starlette's and http.client's header maps look it up in any case.
HEADER_LENGTH = "Inference-Header-Content-Length"

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_NUMPY_TO_DATATYPE = {v: k for k, v in DATATYPES.items()}


def datatype_of(array: np.ndarray) -> str:
    if array.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    return _NUMPY_TO_DATATYPE[array.dtype]


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] | None = None  # None: the request has none
    outputs: list[str] | None = None  # None: all outputs
    binary_outputs: set[str] | frozenset[str] = frozenset()  # no factory: one request is made per inference


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None
    binary_outputs: set[str] = field(default_factory=set)


class TensorSignature:
    """What a model accepts: input name -> (datatype, shape with -1 for dynamic dims)."""

    def __init__(self, inputs: Iterable[Any], outputs: Iterable[Any]) -> None:
        self.inputs = {t.name: (t.datatype, tuple(t.shape)) for t in inputs}
        self.outputs = [t.name for t in outputs]

    @functools.cached_property
    def common_input(self) -> tuple[str, str, int, list[int], int, float] | None:
        """What `_decode_common` decodes, for a model of one floating-point input with a batch axis (a dynamic first
        dimension, the others fixed: as export writes it): the input's name, datatype and number of dimensions, the
        shape and size of one row, and the datatype's largest finite value. None for any other model. Computed once,
        on the first request."""
        if len(self.inputs) != 1:
            return None
        ((name, (datatype, shape)),) = self.inputs.items()
        largest = _LARGEST.get(datatype)
        if largest is None or not shape or shape[0] >= 0 or any(d < 0 for d in shape[1:]):
            return None
        return name, datatype, len(shape), list(shape[1:]), math.prod(shape[1:]), largest

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> TensorSignature:
        """From a manifest's `inputs` and `outputs` lists of {name, datatype, shape}."""
        signature = cls([], [])
        signature.inputs = {t["name"]: (t["datatype"], tuple(t["shape"])) for t in manifest["inputs"]}
        signature.outputs = [t["name"] for t in manifest.get("outputs") or []]
        return signature


def json_object(body: bytes, expected: str = "a JSON object") -> dict[str, Any]:
    """A request body that must be a JSON object; 400 saying what was expected otherwise."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"request body must be {expected}")
    return doc


def decode_request(body: bytes, header_length: str | None, signature: TensorSignature) -> InferRequest:
    json_part, binary = (body, b"") if header_length is None else _split_body(body, header_length)
    if json_part is None:
        # Raw binary request (header length 0): the whole body is the single input's tensor.
        return _decode_raw(binary, signature)
    doc = json_object(json_part, "a JSON object with an 'inputs' list")
    common = _decode_common(doc, signature)
    if common is not None:
        return common
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")

    offset, inputs = 0, {}
    for i, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise InvalidInput(f"inputs[{i}] must be an object with name, shape, datatype and data")
        name, array, offset = _decode_input(i, item, binary, offset, signature)
        if name in inputs:
            raise InvalidInput(f"input {name!r} is given twice")
        inputs[name] = array
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data follow the tensors and belong to none")
    missing = [n for n in signature.inputs if n not in inputs]
    if missing:
        raise InvalidInput(f"missing input(s) {', '.join(missing)}; the model takes {', '.join(signature.inputs)}")

    parameters = _parameters(doc.get("parameters"), "parameters")
    outputs, binary_outputs = _requested_outputs(doc.get("outputs"), parameters, signature)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    return InferRequest(inputs, request_id, parameters or None, outputs, binary_outputs)


_NUMBERS = frozenset({int, float})
_INTS = frozenset({int})
# The largest finite value of each floating-point type: anything larger becomes infinity when cast to it.
_LARGEST = {name: float(np.finfo(DATATYPES[name]).max) for name in ("FP16", "FP32", "FP64")}


# The infer hot path: written out, one function, no intermediate objects (each check is one the general path makes).
def _decode_common(doc: dict[str, Any], signature: TensorSignature) -> InferRequest | None:
    """The common request, decoded without the general path's walk: a model of one floating-point input, given as one
    flat list of numbers, with nothing else but an optional string id (what `maasctl predict --url --json`,
    tritonclient's JSON and the benchmarks send). None for anything else, any error included: `decode_request` then
    takes the general path, which names the error. Same result as the general path for every request it takes."""
    spec = signature.common_input
    if spec is None or (len(doc) != 1 and not (len(doc) == 2 and type(doc.get("id")) is str)):
        return None
    name, datatype, ndim, row_shape, row_size, largest = spec
    inputs = doc.get("inputs")
    if type(inputs) is not list or len(inputs) != 1:
        return None
    item = inputs[0]
    if type(item) is not dict or len(item) != 4 or item.get("name") != name or item.get("datatype") != datatype:
        return None
    shape, data = item.get("shape"), item.get("data")
    # [rows, *row_shape] of ints: list equality, then the types (equality alone takes 8.0 or true for 8 or 1).
    if (
        type(shape) is not list
        or len(shape) != ndim
        or shape[1:] != row_shape
        or not _INTS.issuperset(map(type, shape))
    ):
        return None
    # A flat list of ints and floats only: a nested list, a string, a bool or a null is left to the general path.
    rows = shape[0]
    if type(data) is not list or rows < 1 or len(data) != rows * row_size or not _NUMBERS.issuperset(map(type, data)):
        return None
    # No value beyond the type's range (see _from_json): their hypotenuse bounds them all, and costs a sixth of the
    # floating-point error state the general path raises the cast's overflow with.
    try:
        if not math.hypot(*data) <= largest:
            return None
    except OverflowError:  # an integer beyond any float
        return None
    return InferRequest({name: np.array(data, dtype=DATATYPES[datatype]).reshape(shape)}, doc.get("id"))


def encode_response(response: InferResponse) -> tuple[bytes, dict[str, str]]:
    """Response body and extra headers. Binary outputs go after the JSON, in output order."""
    return encode_reply(
        response.model_name, response.model_version, response.outputs, response.id, response.binary_outputs
    )


def encode_reply(
    model_name: str,
    model_version: str,
    outputs: dict[str, np.ndarray],
    request_id: str | None = None,
    binary_outputs: set[str] | frozenset[str] = frozenset(),
) -> tuple[bytes, dict[str, str]]:
    """`encode_response` without the InferResponse (the REST hot path builds none)."""
    entries, chunks = [], []
    for name, array in outputs.items():
        datatype = _NUMPY_TO_DATATYPE.get(array.dtype) or datatype_of(array)  # numbers found at once; else BYTES
        if name in binary_outputs:
            raw = _to_bytes(array)
            chunks.append(raw)
            parameters = {"binary_data_size": len(raw)}
            entries.append({"name": name, "datatype": datatype, "shape": list(array.shape), "parameters": parameters})
        elif datatype == "BYTES":
            data = [_bytes_to_json(v) for v in array.ravel()]
            entries.append({"name": name, "datatype": datatype, "shape": list(array.shape), "data": data})
        else:  # ravel() is C-contiguous (a copy only when the array is not), as orjson needs
            entries.append({"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.ravel()})
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": entries}
    if request_id is not None:
        doc["id"] = request_id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {}
    return header + b"".join(chunks), {HEADER_LENGTH: str(len(header))}


# --- the client half: what `maasctl predict --url` sends and reads ---------------------------------------------------


def encode_request(
    inputs: dict[str, np.ndarray], outputs: Sequence[str], binary: bool = True
) -> tuple[bytes, dict[str, str]]:
    """An infer request body and its headers; with `binary`, tensors travel as raw little-endian bytes after the
    JSON header, both ways (the binary tensor data extension), else as JSON lists."""
    entries, chunks = [], []
    for name, array in inputs.items():
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype_of(array)}
        if binary:
            raw = _to_bytes(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = np.ascontiguousarray(array).ravel()
        entries.append(entry)
    wanted = [{"name": n, "parameters": {"binary_data": binary}} for n in outputs]
    header = orjson.dumps({"inputs": entries, "outputs": wanted}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(chunks), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def decode_response(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """An infer response's outputs by name, whether their data came as JSON or as binary after the header.

    Raises ValueError (or KeyError/TypeError from a malformed document) when the response is not one."""
    split = int(header_length) if header_length is not None else len(body)
    doc = orjson.loads(body[:split])
    offset, outputs = split, {}
    for out in doc["outputs"]:
        name, datatype, shape = out["name"], out["datatype"], out["shape"]
        if datatype not in DATATYPES or datatype == "BYTES":
            raise ValueError(f"output {name!r} is {datatype}, not a numeric tensor")
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            outputs[name] = np.asarray(out["data"], dtype=DATATYPES[datatype]).reshape(shape)
            continue
        raw, offset = body[offset : offset + size], offset + size
        if len(raw) != size:
            raise ValueError(f"output {name!r} is cut short: {len(raw)} of {size} bytes")
        dtype = DATATYPES[datatype]
        outputs[name] = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    return outputs


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes | None, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.strip().isdecimal():
        raise InvalidInput(f"{HEADER_LENGTH} must be a non-negative integer, got {header_length!r}")
    n = int(header_length)
    if n < 0 or n > len(body):
        raise InvalidInput(f"{HEADER_LENGTH} {n} is outside the body's {len(body)} bytes")
    if n == 0:
        return None, body
    return body[:n], body[n:]


def _decode_raw(binary: bytes, signature: TensorSignature) -> InferRequest:
    if len(signature.inputs) != 1:
        raise InvalidInput("a raw binary request (header length 0) needs a model with exactly one input")
    name, (datatype, shape) = next(iter(signature.inputs.items()))
    array = _from_bytes(binary, datatype, None, name)
    per_item = math.prod(d for d in shape[1:] if d > 0) if shape else 1
    if any(d < 0 for d in shape[1:]) or per_item == 0 or array.size % per_item:
        raise InvalidInput(
            f"raw request of {array.size} {datatype} values does not fill whole {name} items of shape {list(shape[1:])}"
        )
    array = array.reshape((-1, *shape[1:]))
    if shape and shape[0] >= 0 and array.shape[0] != shape[0]:
        raise InvalidInput(f"raw request holds {array.shape[0]} {name} items; the model takes exactly {shape[0]}")
    return InferRequest({name: array})


def _decode_input(i: int, item: dict[str, Any], binary: bytes, offset: int, signature: TensorSignature):
    name = item.get("name")
    if not isinstance(name, str):
        raise InvalidInput(f"inputs[{i}].name must be a string")
    if name not in signature.inputs:
        raise InvalidInput(f"unknown input {name!r}; the model takes {', '.join(signature.inputs)}")
    expected_type, expected_shape = signature.inputs[name]
    datatype = item.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}; use one of {', '.join(DATATYPES)}")
    if datatype != expected_type:
        raise InvalidInput(f"input {name!r}: datatype {datatype} given, the model takes {expected_type}")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):  # bool is not int here
        raise InvalidInput(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    _check_shape(name, shape, expected_shape)
    params = item.get("parameters")  # usually none: then no message for an error that cannot happen is formatted
    if params is not None and "binary_data_size" in _parameters(params, f"input {name!r} parameters"):
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise InvalidInput(
                f"input {name!r}: binary_data_size {size!r} overruns the {len(binary) - offset} bytes left"
            )
        array = _from_bytes(binary[offset : offset + size], datatype, shape, name)
        return name, array, offset + size
    if "data" not in item:
        raise InvalidInput(f"input {name!r}: no 'data' and no binary_data_size parameter")
    return name, _from_json(item["data"], datatype, shape, name), offset


def _check_shape(name: str, shape: Sequence[int], expected: Sequence[int]) -> None:
    if len(shape) != len(expected) or any(e >= 0 and s != e for s, e in zip(shape, expected)):
        want = "[" + ", ".join("-1" if e < 0 else str(e) for e in expected) + "]"
        raise InvalidInput(f"input {name!r}: shape {list(shape)} does not match the model's {want} (-1: any size)")


def _from_json(data: Any, datatype: str, shape: list[int], name: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        flat = list(_flatten(data))
        if len(flat) != count:
            raise InvalidInput(f"input {name!r}: {len(flat)} values for shape {shape} ({count} expected)")
        return np.array([v.encode() if isinstance(v, str) else v for v in flat], dtype=object).reshape(shape)
    target = DATATYPES[datatype]
    if count == 0:  # an empty tensor: the data must hold no values either
        given = sum(1 for _ in _flatten(data))
        if given:
            raise InvalidInput(f"input {name!r}: {given} values for shape {shape} (0 expected)")
        return np.zeros(shape, dtype=target)
    # The leaves' types first, without copying them: numpy would turn a list holding one long string into a
    # fixed-width text array of that width per value (gigabytes), and quietly read true as 1 and null as nan.
    kinds = _leaf_types(data, name)
    if datatype == "BOOL":
        if kinds != {bool}:
            raise InvalidInput(f"input {name!r}: BOOL data must be true/false")
        return _as_array(data, target, shape, name)
    if not kinds <= {int, float}:  # strings, nulls, objects, and true/false for a numeric type
        raise InvalidInput(f"input {name!r}: data must be numbers for datatype {datatype}")
    if target.kind == "f":
        # Straight into the target type, no float64 copy in between. orjson yields no infinity or NaN (JSON has
        # none), so the only non-finite value can be one beyond the type's range: numpy's cast flags it (raised
        # here, which costs less than checking the array after).
        try:
            with np.errstate(over="raise"):
                return _as_array(data, target, shape, name)
        except FloatingPointError:
            raise InvalidInput(f"input {name!r}: values out of range for {datatype}") from None
    if float in kinds:
        probe = _as_array(data, np.dtype(np.float64), shape, name)
        if not (np.isfinite(probe).all() and (probe == np.trunc(probe)).all()):
            raise InvalidInput(f"input {name!r}: {datatype} data must be integers")
        del probe
    # Exact for all 64-bit values (a float64 probe is not); numpy refuses any value outside the type's range.
    return _as_array(data, target, shape, name)


def _leaf_types(data: Any, name: str) -> set[type]:
    """The types of the values in (nested) `data`, found by walking it at the depth of its first leaf."""
    depth, probe = 0, data
    while isinstance(probe, list) and probe:
        probe, depth = probe[0], depth + 1
    if depth == 0:
        return {type(data)}
    leaves: Any = data
    for _ in range(depth - 1):
        leaves = itertools.chain.from_iterable(leaves)
    try:
        return set(map(type, leaves))
    except TypeError:  # a number where a list was expected
        raise InvalidInput(f"input {name!r}: data is ragged (nested lists of different lengths)") from None


def _as_array(data: Any, dtype: np.dtype, shape: list[int], name: str) -> np.ndarray:
    try:
        array = np.array(data, dtype=dtype)
    except ValueError:
        raise InvalidInput(f"input {name!r}: data is ragged (nested lists of different lengths)") from None
    except OverflowError:  # an integer beyond the type (or beyond any float)
        raise InvalidInput(f"input {name!r}: values out of range for {_NUMPY_TO_DATATYPE[dtype]}") from None
    if array.size != math.prod(shape):
        raise InvalidInput(f"input {name!r}: {array.size} values for shape {shape} ({math.prod(shape)} expected)")
    return array.reshape(shape)


def _from_bytes(raw: bytes, datatype: str, shape: list[int] | None, name: str) -> np.ndarray:
    if datatype == "BYTES":
        items, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise InvalidInput(f"input {name!r}: truncated BYTES length prefix")
            (n,) = struct.unpack_from("<I", raw, pos)
            if pos + 4 + n > len(raw):
                raise InvalidInput(f"input {name!r}: BYTES element overruns the binary data")
            items.append(raw[pos + 4 : pos + 4 + n])
            pos += 4 + n
        array = np.array(items, dtype=object)
    else:
        dtype = DATATYPES[datatype].newbyteorder("<")
        if len(raw) % dtype.itemsize:
            raise InvalidInput(f"input {name!r}: {len(raw)} bytes is not a whole number of {datatype} values")
        array = np.frombuffer(raw, dtype=dtype).astype(DATATYPES[datatype], copy=False)
    if shape is not None:
        if array.size != math.prod(shape):
            raise InvalidInput(
                f"input {name!r}: binary data holds {array.size} values, shape {shape} needs {math.prod(shape)}"
            )
        array = array.reshape(shape)
    return array


def _to_bytes(array: np.ndarray) -> bytes:
    if array.dtype.kind in ("O", "S", "U"):
        parts = []
        for v in array.ravel():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _bytes_to_json(v: Any) -> str:
    return v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)


def _flatten(data: Any):
    if isinstance(data, list):
        for d in data:
            yield from _flatten(d)
    else:
        yield data


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be an object")
    return value


def _requested_outputs(value: Any, parameters: dict[str, Any], signature: TensorSignature):
    all_binary = parameters.get("binary_data_output") is True
    if value is None:
        return None, set(signature.outputs) if all_binary else set()
    if not isinstance(value, list):
        raise InvalidInput("'outputs' must be a list of {name, parameters?} objects")
    names, binary = [], set()
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{i}] must be an object with a 'name'")
        name = item["name"]
        if name not in signature.outputs:
            raise InvalidInput(f"unknown output {name!r}; the model gives {', '.join(signature.outputs)}")
        params = _parameters(item.get("parameters"), f"output {name!r} parameters")
        if params.get("binary_data", all_binary) is True:
            binary.add(name)
        names.append(name)
    return names, binary
