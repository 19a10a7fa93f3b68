"""The dataplane: which models are loaded, their metadata, and inference. Knows nothing of HTTP."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from maasctl import __version__
from maasctl.errors import MaasctlError
from maasctl.protocol.errors import NotFound
from maasctl.protocol.v2 import DATATYPES, InferResponse, TensorSignature, decode_request, encode_response
from maasctl.repository import ModelRepository
from maasctl.runtime import LoadedModel, load_model
from maasctl.serve import metrics as m
from maasctl.serve.batching import BackendError, BatchingConfig, ModelBatcher, Overloaded, TimedOut

log = logging.getLogger("maasctl.serve")

EXTENSIONS = ["binary_tensor_data", "maasctl_manifest"]


class DataPlane:
    def __init__(self, repo: ModelRepository, device: str = "auto", batching: BatchingConfig | None = None) -> None:
        self.repo = repo
        self.device = device
        self.batching = batching or BatchingConfig()
        self.metrics = m.Metrics()  # this dataplane's own registry, served at /metrics
        self.models: dict[str, LoadedModel] = {}  # the version being served, per model name
        self.signatures: dict[str, TensorSignature] = {}
        self.batchers: dict[str, ModelBatcher] = {}
        self.failures: dict[str, str] = {}
        self.loaded = False

    def load_all(self) -> None:
        """Load and warm up the latest version of every model; a model that fails is reported, not fatal."""
        for name in self.repo.names():
            try:
                # No spinning: idle onnxruntime threads would busy-wait on the cores the event loop needs
                # (measured on 2 cores: ~650 µs of CPU per request at 16 connections, half the throughput).
                model = load_model(self.repo.get(name), self.device, allow_spinning=False)
                _warm_up(model)
            except MaasctlError as exc:
                self.failures[name] = str(exc)
                log.error("model %s failed to load: %s", name, exc)
                continue
            self.models[name] = model
            self.signatures[name] = TensorSignature(model.inputs, model.outputs)
            batcher = self.batchers[name] = ModelBatcher(model, self.batching, self.metrics)
            max_batch = self.batching.max_batch_size if batcher.batchable else 1
            self.metrics.model_loaded(name, model.version, model.provider, max_batch)
            batching = f"dynamic batching up to {max_batch} rows" if batcher.batchable else "no batching"
            log.info("model %s version %d ready on %s, %s", name, model.version, model.provider, batching)
        if not self.models and not self.failures:
            log.warning("no models in %s: export one with `maasctl export RUN`", self.repo.root)
        self.loaded = True

    @property
    def ready(self) -> bool:
        return self.loaded and not self.failures

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "maasctl", "version": __version__, "extensions": EXTENSIONS}

    def model(self, name: str, version: str | None = None) -> LoadedModel:
        model = self.models.get(name)
        if model is None:
            reason = f": it failed to load ({self.failures[name]})" if name in self.failures else ""
            raise NotFound(f"unknown model {name!r}{reason}")
        if version is not None and version != str(model.version):
            raise NotFound(f"model {name!r} has no version {version!r} loaded (serving version {model.version})")
        return model

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        model = self.model(name, version)
        return {
            "name": model.name,
            "versions": [str(model.version)],
            "platform": "onnx_onnxv1",
            "inputs": [t.to_json() for t in model.inputs],
            "outputs": [t.to_json() for t in model.outputs],
        }

    def model_manifest(self, name: str, version: str | None = None) -> dict[str, Any]:
        """maasctl extension: labels and preprocessing, so clients can send files and name classes."""
        model = self.model(name, version)
        return {**model.manifest, "name": model.name, "version": model.version, "provider": model.provider}

    async def infer(self, name: str, version: str | None, body: bytes, header_length: str | None) -> tuple[bytes, dict[str, str]]:
        model = self.model(name, version)
        labels = (model.name, str(model.version))
        start = time.perf_counter()
        try:
            self.batchers[name].raise_if_full()
            request = decode_request(body, header_length, self.signatures[name])
            outputs = await self.batchers[name].infer(request.inputs, request.outputs)
            response = InferResponse(name, str(model.version), outputs, request.id, request.binary_outputs)
            encoded = encode_response(response)
        except asyncio.CancelledError:
            self.metrics.failure.labels(*labels, m.CANCELED).inc()
            raise
        except Exception as exc:
            self.metrics.failure.labels(*labels, _reason(exc)).inc()
            raise
        self.metrics.success.labels(*labels).inc()
        self.metrics.request_seconds.labels(*labels).observe(time.perf_counter() - start)
        return encoded

    async def close(self) -> None:
        """Stop the batch workers (at shutdown, after in-flight requests have drained)."""
        for batcher in self.batchers.values():
            await batcher.close()


def _reason(exc: Exception) -> str:
    if isinstance(exc, Overloaded):
        return m.REJECTED
    if isinstance(exc, TimedOut):
        return m.TIMEOUT
    if isinstance(exc, BackendError):
        return m.BACKEND
    return m.OTHER


def _warm_up(model: LoadedModel) -> None:
    """One inference at load, so the first request does not pay for onnxruntime's lazy initialisation."""
    feeds = {}
    for spec in model.inputs:
        shape = [1 if d < 0 else d for d in spec.shape]
        feeds[spec.name] = np.zeros(shape, dtype=DATATYPES[spec.datatype])
    model.run(feeds)
