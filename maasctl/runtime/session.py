"""onnxruntime sessions: provider choice, integrity check, and the tensor signature clients see."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from maasctl.errors import Unavailable, UsageError
from maasctl.repository import ModelVersion, attach_tokenizer, verify_onnx

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# onnxruntime's type strings -> Open Inference Protocol datatypes
ORT_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 where the dimension is dynamic

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class LoadedModel:
    name: str
    version: int
    manifest: dict[str, Any]
    session: ort.InferenceSession
    provider: str  # the execution provider the session actually runs on
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> dict[str, np.ndarray]:
        names = output_names or [o.name for o in self.outputs]
        feeds = {name: _strings(a) if a.dtype == object else a for name, a in feeds.items()}
        return dict(zip(names, self.session.run(names, feeds)))


def select_providers(device: str) -> list[str]:
    """Providers to ask onnxruntime for. `cuda` is strict: no CUDA provider is an error, not a quiet CPU run."""
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise UsageError(
            f"device cuda was requested, but this onnxruntime has no {CUDA} (it has: {', '.join(available)}). "
            "Install onnxruntime-gpu alone (not beside onnxruntime; `maasctl doctor` checks), or use --device cpu."
        )
    return [CPU]


def load_model(
    model: ModelVersion, device: str = "auto", verify: bool = True, allow_spinning: bool = True
) -> LoadedModel:
    """`allow_spinning=False` stops onnxruntime's worker threads from busy-waiting between runs: better when the
    caller does CPU work of its own between runs (predict decoding images on a small machine)."""
    manifest = model.manifest()
    if verify:
        verify_onnx(model.path, manifest)
    manifest = attach_tokenizer(model.path, manifest, verify)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    threads = os.environ.get("MAASCTL_INTRA_OP_THREADS", "")  # serve --workers N: each worker's share of the cores
    if threads.isdecimal():
        options.intra_op_num_threads = int(threads)
    try:
        session = ort.InferenceSession(str(model.onnx_path), sess_options=options, providers=select_providers(device))
    except UsageError:
        raise
    except Exception as exc:  # onnxruntime raises its own types for corrupt or unsupported models
        raise Unavailable(f"{model.onnx_path}: onnxruntime cannot load it: {exc}") from None
    # onnxruntime falls back to CPU silently when CUDA libraries are missing: report what it really got.
    provider = session.get_providers()[0]
    if device == "cuda" and provider != CUDA:
        raise UsageError(f"{model.name}: asked for CUDA but onnxruntime created the session on {provider}")
    return LoadedModel(
        name=model.name,
        version=model.version,
        manifest=manifest,
        session=session,
        provider=provider,
        inputs=[_spec(a) for a in session.get_inputs()],
        outputs=[_spec(a) for a in session.get_outputs()],
    )


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
    return TensorSpec(arg.name, ORT_TO_DATATYPE.get(arg.type, arg.type), shape)


def _strings(array: np.ndarray) -> np.ndarray:
    """BYTES tensors as onnxruntime's string tensors take them: str. Given bytes, it would run on their repr
    ("b'...'"). Bytes that are not UTF-8 raise UnicodeDecodeError, which the caller reports as a refused input."""
    flat = [v.decode("utf-8") if isinstance(v, bytes) else v for v in array.ravel()]
    return np.array(flat, dtype=object).reshape(array.shape)
