"""The lean probe: how fast one Python process can serve the v2 JSON infer request with nothing but the essentials.
The reference `benchmarks/serve.py` measures `maasctl serve` against, not a product.

    python benchmarks/lean_probe.py MODEL.onnx PORT [--metrics] [--validate] [--features] [--model-thread]

A raw ASGI callable under uvicorn (uvloop + httptools, as maasctl gets them), orjson, one asyncio batching task
feeding one onnxruntime thread (up to 32 rows a run, no queue delay: maasctl's defaults; the session made as
maasctl serve makes it, onnxruntime's threads not spinning between runs). No validation, no
metrics, no middleware, no routing beyond a prefix test; a request it cannot read gets a bare 400.

`--metrics` adds what maasctl counts per request (a success counter and a latency histogram, prometheus-client,
children bound once) and `--validate` maasctl's checks of the body against the signature (its own
`decode_request`), to show what each feature costs on this path when the probe is the yardstick.

`--features` adds every per-request feature of `maasctl serve`, each as maasctl implements it: the body limit and
budget (`BodyBudget.reserve`), the validation (`decode_request`), the request and queue-time tallies
(`maasctl.serve.metrics`), and the drift window (`DriftMonitor`, from the `model.json` beside the model). Everything
else stays the probe's: one model, one input, no routing, no output selection, no timeouts. What this variant
serves is the limit for a server that has maasctl's features; what maasctl spends beyond it is its generality.
`--model-thread` hands each batch to onnxruntime's thread as maasctl does (`maasctl.serve.batching.ModelThread`: a
queue put and one `call_soon_threadsafe`) instead of `run_in_executor`: with `--features`, the leanest structure
known with maasctl's features.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn

MAX_BATCH = 32
JSON_HEADERS = [(b"content-type", b"application/json")]


class Probe:
    def __init__(
        self,
        onnx_path: str,
        metrics: bool = False,
        validate: bool = False,
        features: bool = False,
        model_thread: bool = False,
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as maasctl serve makes it
        self.session = ort.InferenceSession(onnx_path, sess_options=options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.queue: list[tuple[np.ndarray, asyncio.Future]] = []
        self.arrived: asyncio.Event | None = None
        self.thread = ThreadPoolExecutor(1)  # the one onnxruntime thread
        self.model_thread = _model_thread() if model_thread else None
        self.metrics = _metrics() if metrics else None
        self.signature = _signature(self.session) if validate or features else None
        self.features = _Features(onnx_path) if features else None

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["method"] == "POST" and scope["path"].endswith("/infer"):
            if self.features is None:
                await self._infer(receive, send)
            else:
                await self._infer_with_features(scope, receive, send)
        elif scope["path"] == "/v2/health/ready":
            await _answer(send, 200, b'{"ready":true}')
        else:
            await _answer(send, 404, b'{"error":"not found"}')

    async def _infer(self, receive, send) -> None:
        start = time.perf_counter()
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            x = self._decode(body)
        except Exception:
            await _answer(send, 400, b'{"error":"bad request"}')
            return
        future = asyncio.get_running_loop().create_future()
        self.queue.append((x, future))
        self.arrived.set()
        y = await future
        reply = {"model_name": "model", "outputs": [_tensor(self.output, y)]}
        await _answer(send, 200, orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY))
        if self.metrics is not None:
            success, seconds = self.metrics
            success.inc()
            seconds.observe(time.perf_counter() - start)

    async def _infer_with_features(self, scope: dict, receive, send) -> None:
        """`_infer` with maasctl's features (see the module's docstring), each where maasctl has it."""
        start, features = time.perf_counter(), self.features
        declared = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = value.decode("latin-1")
        _, reserved = features.budget.reserve(declared, None, 64 << 20)
        try:
            message = await receive()
            try:
                x = features.decode(message["body"], None, self.signature).inputs[self.input]
            except Exception:
                await _answer(send, 400, b'{"error":"bad request"}')
                return
            future = asyncio.get_running_loop().create_future()
            self.queue.append((x, future, time.perf_counter()))
            self.arrived.set()
            y = await future
        finally:
            features.budget.held -= reserved
        reply = {"model_name": "model", "outputs": [_tensor(self.output, y)]}
        await _answer(send, 200, orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY))
        features.requests.add(time.perf_counter() - start)

    def _decode(self, body: bytes) -> np.ndarray:
        if self.signature is not None:
            return _decode_request()(body, None, self.signature).inputs[self.input]
        tensor = orjson.loads(body)["inputs"][0]
        return np.array(tensor["data"], dtype=np.float32).reshape(tensor["shape"])

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.arrived.wait()
            self.arrived.clear()
            while self.queue:
                batch, self.queue = self.queue[:MAX_BATCH], self.queue[MAX_BATCH:]
                if self.features is not None:
                    now = time.perf_counter()
                    self.features.queued.add_all([now - queued for _, _, queued in batch])
                x = np.concatenate([r[0] for r in batch])
                if self.model_thread is None:
                    y = (await loop.run_in_executor(self.thread, self.session.run, [self.output], {self.input: x}))[0]
                else:
                    y = (await self.model_thread.run(self.session.run, [self.output], {self.input: x}))[0]
                offset = 0
                for r in batch:
                    r[1].set_result(y[offset : offset + len(r[0])])
                    offset += len(r[0])
                if self.features is not None and self.features.drift is not None:
                    loop.call_soon(self.features.drift.observe, {self.input: x}, {self.output: y})

    async def _lifespan(self, receive, send) -> None:
        worker = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.arrived = asyncio.Event()
                worker = asyncio.create_task(self._batches())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if worker is not None:
                    worker.cancel()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _tensor(name: str, array: np.ndarray) -> dict:
    return {"name": name, "datatype": "FP32", "shape": list(array.shape), "data": array.ravel()}


async def _answer(send, status: int, body: bytes) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Features:
    """maasctl's own per-request parts, for `--features`."""

    def __init__(self, onnx_path: str) -> None:
        import json
        from pathlib import Path

        from maasctl.drift import DriftMonitor
        from maasctl.serve.memory import BodyBudget
        from maasctl.serve.metrics import Metrics

        manifest = json.loads((Path(onnx_path).parent / "model.json").read_text())
        metrics = Metrics()
        self.requests, self.queued = metrics.request_tally("model", "1"), metrics.queue_tally("model", "1")
        self.budget = BodyBudget()
        self.drift = DriftMonitor.for_model("model", 1, manifest)
        self.decode = _decode_request()


def _model_thread():
    from maasctl.serve.batching import ModelThread

    return ModelThread("probe-model")


def _decode_request():
    from maasctl.protocol.v2 import decode_request

    return decode_request


def _metrics():
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from maasctl.serve.metrics import LATENCY_BUCKETS

    registry = CollectorRegistry()
    success = Counter("success", "requests", ["model", "version"], registry=registry).labels("model", "1")
    seconds = Histogram("seconds", "latency", ["model", "version"], buckets=LATENCY_BUCKETS, registry=registry)
    return success, seconds.labels("model", "1")


def _signature(session: ort.InferenceSession):
    from maasctl.protocol.v2 import TensorSignature

    def tensor(t):
        shape = [d if isinstance(d, int) else -1 for d in t.shape]
        return {"name": t.name, "datatype": "FP32", "shape": shape}

    return TensorSignature.from_manifest(
        {"inputs": [tensor(t) for t in session.get_inputs()], "outputs": [tensor(t) for t in session.get_outputs()]}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx")
    parser.add_argument("port", type=int)
    parser.add_argument("--metrics", action="store_true", help="count requests and latency as maasctl does")
    parser.add_argument("--validate", action="store_true", help="check bodies against the signature as maasctl does")
    parser.add_argument("--features", action="store_true", help="every per-request feature of maasctl serve, its way")
    parser.add_argument("--model-thread", action="store_true", help="hand batches to onnxruntime as maasctl does")
    args = parser.parse_args()
    app = Probe(
        args.onnx, metrics=args.metrics, validate=args.validate, features=args.features, model_thread=args.model_thread
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, server_header=False)


if __name__ == "__main__":
    main()
