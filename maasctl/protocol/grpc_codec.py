"""Decode gRPC ModelInferRequest messages and encode ModelInferResponse ones (the Open Inference Protocol's gRPC
form), with the same checks as the REST codec in v2.py: a request becomes the same `InferRequest`.

Inputs come as `raw_input_contents` (one little-endian, row-major bytes entry per input, in the order of
`inputs`; what tritonclient.grpc sends) or typed in each input's `contents`, never both. Outputs always go back
as `raw_output_contents`: tritonclient.grpc's `as_numpy` reads only those.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from maasctl.protocol import oip_pb2 as pb
from maasctl.protocol.errors import InvalidInput
from maasctl.protocol.v2 import DATATYPES, InferRequest, InferResponse, TensorSignature, datatype_of
from maasctl.protocol.v2 import _check_shape as check_shape
from maasctl.protocol.v2 import _from_bytes as from_bytes
from maasctl.protocol.v2 import _to_bytes as to_bytes

# datatype -> the InferTensorContents field that carries it when typed (FP16 travels raw only)
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_infer_request(message: pb.ModelInferRequest, signature: TensorSignature) -> InferRequest:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs: give one per input")
    if not message.inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(message.inputs):
        name = tensor.name
        if name in inputs:
            raise InvalidInput(f"input {name!r} is given twice")
        inputs[name] = _decode_input(tensor, raw[i] if raw else None, signature)
    missing = [n for n in signature.inputs if n not in inputs]
    if missing:
        raise InvalidInput(f"missing input(s) {', '.join(missing)}; the model takes {', '.join(signature.inputs)}")
    outputs = None
    if message.outputs:
        outputs = [o.name for o in message.outputs]
        unknown = [n for n in outputs if n not in signature.outputs]
        if unknown:
            raise InvalidInput(f"unknown output {unknown[0]!r}; the model gives {', '.join(signature.outputs)}")
    return InferRequest(inputs, message.id or None, outputs=outputs)


def _decode_input(tensor: Any, raw: bytes | None, signature: TensorSignature) -> np.ndarray:
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if name not in signature.inputs:
        raise InvalidInput(f"unknown input {name!r}; the model takes {', '.join(signature.inputs)}")
    expected_type, expected_shape = signature.inputs[name]
    if datatype not in DATATYPES:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}; use one of {', '.join(DATATYPES)}")
    if datatype != expected_type:
        raise InvalidInput(f"input {name!r}: datatype {datatype} given, the model takes {expected_type}")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape must be non-negative integers, got {shape}")
    check_shape(name, shape, expected_shape)
    has_contents = tensor.HasField("contents")
    if raw is not None:
        if has_contents:
            raise InvalidInput(f"input {name!r}: both raw_input_contents and contents; use one or the other")
        return from_bytes(raw, datatype, shape, name)
    if not has_contents:
        raise InvalidInput(f"input {name!r}: no contents and no raw_input_contents")
    return _from_contents(tensor.contents, datatype, shape, name)


def _from_contents(contents: Any, datatype: str, shape: list[int], name: str) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input {name!r}: {datatype} travels only in raw_input_contents")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(f"input {name!r}: {len(values)} values in {field} for shape {shape} ({count} expected)")
    target = DATATYPES[datatype]
    if datatype == "BYTES":
        return np.array(list(values), dtype=object).reshape(shape)
    if field in ("int_contents", "uint_contents") and target.itemsize < 4:
        # int32/uint32 fields carry the 8- and 16-bit types: refuse what does not fit rather than wrap it
        wide = np.fromiter(values, dtype=np.int64, count=count)
        info = np.iinfo(target)
        if count and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidInput(f"input {name!r}: values out of range for {datatype}")
        return wide.astype(target).reshape(shape)
    return np.fromiter(values, dtype=target, count=count).reshape(shape)


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or ""
    )
    for name, array in response.outputs.items():
        message.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        message.raw_output_contents.append(to_bytes(array))
    return message


def model_metadata(doc: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    """The dataplane's metadata document (the REST reply) as the gRPC message."""

    def tensors(items: list[dict[str, Any]]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [pb.ModelMetadataResponse.TensorMetadata(**t) for t in items]

    return pb.ModelMetadataResponse(
        name=doc["name"],
        versions=doc["versions"],
        platform=doc["platform"],
        inputs=tensors(doc["inputs"]),
        outputs=tensors(doc["outputs"]),
    )


def parameters(message: Any) -> dict[str, Any]:
    """A `map<string, InferParameter>` (or ModelRepositoryParameter) as plain values."""
    values: dict[str, Any] = {}
    for key, value in message.items():
        choice: str | None = value.WhichOneof("parameter_choice")
        values[key] = getattr(value, choice) if choice else None
    return values
