"""The dataplane: which models are loaded, their metadata, and inference. Knows nothing of HTTP."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from maasctl import __version__
from maasctl.errors import MaasctlError, UsageError
from maasctl.inputs.decode import in_input_order, load_all, stack_batches
from maasctl.inputs.outputs import is_regression, label_batch, model_labels, scores_output, value_batch
from maasctl.inputs.types import ModelInput, Sample, Source
from maasctl.protocol.errors import InvalidInput
from maasctl.protocol.v2 import InferRequest, InferResponse, TensorSignature, decode_request, encode_reply
from maasctl.repository import ModelRepository
from maasctl.runtime import LoadedModel
from maasctl.serve import metrics as m
from maasctl.serve.batching import BackendError, BatchingConfig, Overloaded, TimedOut
from maasctl.serve.memory import BodyBudget
from maasctl.serve.models import ServedModels, ServedVersion, VersionPolicy

log = logging.getLogger("maasctl.serve")

EXTENSIONS = ["binary_tensor_data", "model_repository", "maasctl_manifest"]


class DataPlane:
    def __init__(
        self,
        repo: ModelRepository,
        device: str = "auto",
        batching: BatchingConfig | None = None,
        version_policy: VersionPolicy | str = "latest",
        body_budget: BodyBudget | None = None,
    ) -> None:
        self.repo = repo
        self.body_budget = body_budget or BodyBudget()  # body bytes decoded at once, shared by the transports
        self.device = device
        self.batching = batching or BatchingConfig()
        self.metrics = m.Metrics()  # this dataplane's own registry, served at /metrics
        policy = version_policy if isinstance(version_policy, VersionPolicy) else VersionPolicy.parse(version_policy)
        self.served = ServedModels(repo, device, self.batching, self.metrics, policy)
        self.metrics.watch_readiness(self.served.readiness)
        self.metrics.watch_drift(self.served.drift_monitors)
        self.loaded = False

    def load_all(self) -> None:
        """Load and warm up every model's versions per the policy; a model that fails is reported, not fatal."""
        self.served.load_all()
        if not self.served.served and not self.served.expected:
            log.warning("no models in %s: export one with `maasctl export RUN`", self.repo.root)
        self.loaded = True

    @property
    def ready(self) -> bool:
        return self.loaded and self.served.ready

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "maasctl", "version": __version__, "extensions": EXTENSIONS}

    def model(self, name: str, version: str | None = None) -> LoadedModel:
        return self.served.get(name, version).model

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        model = self.model(name, version)
        return {
            "name": model.name,
            "versions": [str(v) for v in sorted(self.served.served[name])],
            "platform": "onnx_onnxv1",
            "inputs": [t.to_json() for t in model.inputs],
            "outputs": [t.to_json() for t in model.outputs],
        }

    def model_manifest(self, name: str, version: str | None = None) -> dict[str, Any]:
        """maasctl extension: labels and preprocessing, so clients can send files and name classes."""
        model = self.model(name, version)
        return {**model.manifest, "name": model.name, "version": model.version, "provider": model.provider}

    async def infer(
        self, name: str, version: str | None, body: bytes, header_length: str | None
    ) -> tuple[bytes, dict[str, str]]:
        served = self.served.get(name, version)
        batcher = served.batcher
        # `counted` and `_run` written out (no context manager, no lambda, no coroutine between this one and the
        # batcher's future): this is the REST hot path.
        start = time.perf_counter()
        try:  # encoding included: a response that cannot be sent is a failure
            batcher.raise_if_full()
            request = decode_request(body, header_length, served.signature)
            outputs = await batcher.infer(request.inputs, request.outputs)
            reply = encode_reply(*batcher.labels, outputs, request.id, request.binary_outputs)
        except BaseException as exc:
            _count_failure(self.metrics, batcher.labels, exc)
            raise
        batcher.request_tally.add(time.perf_counter() - start)  # success counter, request-seconds histogram
        return reply

    async def predict(self, name: str, version: str | None, read: ReadUpload) -> dict[str, Any]:
        """File prediction (`/predict`): the inputs `read` gives for this model, labelled as `maasctl predict
        --json` labels them. One request in the metrics, however many batches its inputs make; `read` runs after
        the model is found (an unknown model is a 404 before any body is read) and counts with the request."""
        served = self.served.get(name, version)
        model = served.model
        with self.counted(model):
            try:
                upload = await read(model.manifest)
            except UsageError as exc:  # inputs the inference-I/O layer cannot use
                raise InvalidInput(str(exc)) from None
            try:
                spec = ModelInput.from_manifest(model.manifest)
            except MaasctlError as exc:
                raise InvalidInput(f"model {name!r} version {model.version} does not take uploads: {exc}") from None
            samples, work = await asyncio.to_thread(_batches, upload.sources, spec)
            output, labels = scores_output(model.manifest), model_labels(model.manifest)
            done = []
            for batch, x in work:
                logits = (await served.batcher.infer(x if isinstance(x, dict) else {spec.name: x}))[output]
                if logits.ndim != 2 or len(logits) != len(batch):
                    raise InvalidInput(
                        f"model {name!r} does not give class scores (its output has shape {list(logits.shape)} "
                        f"for {len(batch)} inputs); use /infer"
                    )
                if is_regression(model.manifest):  # values in the target's units, as `maasctl predict` prints them
                    answered = value_batch(batch, logits)
                else:
                    answered = label_batch(batch, logits, labels, upload.top_k)
                done += zip(batch, (p.to_json() for p in answered))
            predictions = in_input_order(samples, done)  # texts ran in batches by length
            return {"model_name": model.name, "model_version": str(model.version), "predictions": predictions}

    async def infer_decoded(
        self, name: str, version: str | None, decode: Callable[[TensorSignature], InferRequest]
    ) -> InferResponse:
        """`infer` for a transport with its own codec (gRPC): `decode` turns its message into a request checked
        against the model's signature. Counted, queue-limited and batched as `infer`."""
        served = self.served.get(name, version)
        with self.counted(served.model):
            return await self._run(served, decode)

    @staticmethod
    async def _run(served: ServedVersion, decode: Callable[[TensorSignature], InferRequest]) -> InferResponse:
        """One infer request on a served version: refused at once when its queue is full (before decoding),
        decoded against its signature, batched."""
        served.batcher.raise_if_full()
        request = decode(served.signature)
        outputs = await served.batcher.infer(request.inputs, request.outputs)
        model = served.model
        return InferResponse(model.name, str(model.version), outputs, request.id, request.binary_outputs)

    def counted(self, model: LoadedModel) -> _Counted:
        """Count one request to `model` as a success (with its latency) or a failure by reason: `with
        dataplane.counted(model): ...`."""
        return _Counted(self.metrics, model.name, str(model.version))

    # --- the repository extension ---------------------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        return self.served.index(ready_only)

    async def load_model(self, name: str) -> list[int]:
        return await self.served.load(name)

    async def unload_model(self, name: str) -> None:
        await self.served.unload(name)

    async def poll_repository(self) -> None:
        await self.served.poll()

    async def close(self) -> None:
        """Stop the batch workers (at shutdown, after in-flight requests have drained)."""
        await self.served.close()


@dataclass(frozen=True)
class Upload:
    """What a `/predict` request holds, as the transport parsed it."""

    sources: list[Source]
    top_k: int = 1


ReadUpload = Callable[[dict[str, Any]], Awaitable[Upload]]  # the model's manifest -> the request's inputs
SHOWN_PROBLEMS = 3  # problems named in one error message; the rest are counted


def _batches(sources: list[Source], spec: ModelInput) -> tuple[list[Sample], list[tuple[list[Sample], Any]]]:
    """The inputs decoded and stacked (CPU work: run in a thread), or 400 naming each input that cannot be used."""
    samples, problems = load_all(sources, spec)
    if problems:
        shown = "; ".join(p.message for p in problems[:SHOWN_PROBLEMS])
        more = len(problems) - SHOWN_PROBLEMS
        raise InvalidInput(shown + (f" (and {more} more problem{'s' * (more > 1)})" if more > 0 else ""))
    if not samples:
        raise InvalidInput("no inputs in the request")
    return samples, stack_batches(samples, spec)


class _Counted:
    """`DataPlane.counted`: a plain class, not a generator context manager, counting into the model version's request
    tally (`Metrics.request_tally`): it runs on every request."""

    __slots__ = ("labels", "metrics", "start")

    def __init__(self, metrics: m.Metrics, name: str, version: str) -> None:
        self.metrics, self.labels = metrics, (name, version)

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if kind is None:
            self.metrics.request_tally(*self.labels).add(time.perf_counter() - self.start)
        elif exc is not None:
            _count_failure(self.metrics, self.labels, exc)


def _count_failure(metrics: m.Metrics, labels: tuple[str, str], exc: BaseException) -> None:
    """One failed request to the model version `labels`, by reason."""
    if isinstance(exc, asyncio.CancelledError):
        metrics.failure.labels(*labels, m.CANCELED).inc()
    elif isinstance(exc, Exception):
        metrics.failure.labels(*labels, _reason(exc)).inc()


def _reason(exc: Exception) -> str:
    if isinstance(exc, Overloaded):
        return m.REJECTED
    if isinstance(exc, TimedOut):
        return m.TIMEOUT
    if isinstance(exc, BackendError):
        return m.BACKEND
    return m.OTHER
