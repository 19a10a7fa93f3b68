"""`maasctl predict`: label inputs with a model, in-process (onnxruntime) or through a running server.

Imports only numpy and onnxruntime (and Pillow when an input is an image), so a CI step starts fast.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from maasctl.errors import Unavailable, UsageError
from maasctl.preprocess import load_image, normalize_images

TENSOR_SUFFIXES = {".npy", ".json"}


@dataclass
class Prediction:
    input: str
    label: str
    probability: float
    index: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Target(Protocol):
    manifest: dict[str, Any]

    def logits(self, batch: np.ndarray) -> np.ndarray: ...


class LocalTarget:
    def __init__(self, spec: str, repo: str | Path) -> None:
        from maasctl.repository import ModelRepository, resolve_model
        from maasctl.runtime import load_model

        self.model = load_model(resolve_model(spec, ModelRepository(repo)), device="cpu")
        self.manifest = self.model.manifest
        self._input = self.model.inputs[0].name
        self._output = self.manifest["outputs"][0]["name"]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.model.run({self._input: batch}, [self._output])[self._output]


class RemoteTarget:
    """A maasctl server (or any Open Inference Protocol server, for tensor inputs) at `url`."""

    def __init__(self, spec: str, url: str, timeout: float = 30.0) -> None:
        name, _, version = spec.partition(":")
        self.base = url.rstrip("/") + f"/v2/models/{urllib.parse.quote(name)}" + (f"/versions/{version}" if version else "")
        self.timeout = timeout
        self.manifest = self._call("GET", "/manifest")
        self._input = self.manifest["inputs"][0]
        self._output = self.manifest["outputs"][0]["name"]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        body = {
            "inputs": [{"name": self._input["name"], "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()}],
            "outputs": [{"name": self._output}],
        }
        reply = self._call("POST", "/infer", json.dumps(body).encode())
        out = next(o for o in reply["outputs"] if o["name"] == self._output)
        return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])

    def _call(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        request = urllib.request.Request(self.base + path, data=body, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            message = _error_message(exc)
            if exc.code in (404, 503):
                raise Unavailable(f"{self.base}: {message}") from None
            raise UsageError(f"{self.base}{path}: server said {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unavailable(f"cannot reach {self.base}: {reason}") from None


def predict(target: Target, inputs: list[str], batch_size: int = 64) -> list[Prediction]:
    names, tensors = [], []
    for path in inputs:
        for name, tensor in load_input(path, target.manifest):
            names.append(name)
            tensors.append(tensor)
    if not tensors:
        raise UsageError("no inputs to predict")
    labels = target.manifest.get("labels") or []
    predictions = []
    for i in range(0, len(tensors), batch_size):
        probs = softmax(target.logits(np.stack(tensors[i : i + batch_size])))
        for name, p in zip(names[i : i + batch_size], probs):
            k = int(p.argmax())
            predictions.append(Prediction(name, labels[k] if k < len(labels) else str(k), float(p[k]), k))
    return predictions


def load_input(path: str, manifest: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    """One file -> (name, model-ready sample) pairs; a tensor file may hold one sample or a batch of them."""
    sample_shape = tuple(manifest["inputs"][0]["shape"][1:])
    suffix = Path(path).suffix.lower()
    if suffix not in TENSOR_SUFFIXES:
        image = load_image(path, manifest["preprocessing"])
        return [(path, normalize_images(image[None], manifest["preprocessing"])[0])]
    array = _read_tensor(path)
    if array.shape == sample_shape:
        return [(path, array)]
    if array.shape[1:] == sample_shape:
        return [(f"{path}[{i}]", a) for i, a in enumerate(array)]
    raise UsageError(f"{path}: tensor of shape {list(array.shape)}; the model takes {list(sample_shape)} or a batch [N, {', '.join(map(str, sample_shape))}]")


def _read_tensor(path: str) -> np.ndarray:
    try:
        if path.lower().endswith(".npy"):
            array = np.load(path, allow_pickle=False)  # never unpickle what the user did not make
        else:
            doc = json.loads(Path(path).read_text())
            array = np.asarray(doc["data"] if isinstance(doc, dict) and "data" in doc else doc)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (ValueError, OSError, KeyError) as exc:
        raise UsageError(f"{path}: not a readable tensor ({exc.__class__.__name__}: {exc})") from None
    if array.dtype.kind not in "biuf":
        raise UsageError(f"{path}: tensor must hold numbers, got {array.dtype}")
    return array.astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        return json.loads(exc.read()).get("error", exc.reason)
    except Exception:
        return str(exc.reason)
