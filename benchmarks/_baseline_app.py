"""The baselines serve.py compares against: hand-written apps running one onnxruntime call per request on the v2
JSON body, no batching, no checks.

    python benchmarks/_baseline_app.py MODEL.onnx PORT starlette|fastapi

- `fastapi`: what the issue names, written the way FastAPI's documentation teaches: pydantic models for the
  request body, a returned dict for the reply (needs `pip install -e '.[bench]'`).
- `starlette`: a stricter yardstick: Starlette (what maasctl uses) with orjson, no validation layer.

Both answer POST /v2/models/{name}/infer with a v2 JSON response, and GET /v2/health/ready. The session is made
like maasctl's (ORT_ENABLE_ALL, onnxruntime's default threads), and uvicorn runs with the same loop and HTTP
parser choice (uvloop + httptools when installed) and no access log, so the difference is the app's own work.
"""

# No `from __future__ import annotations`: FastAPI reads the local pydantic classes from real annotations.

import sys

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn


def session_for(onnx_path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_path, sess_options=options, providers=["CPUExecutionProvider"])


def starlette_app(onnx_path: str):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    session = session_for(onnx_path)
    output_names = [o.name for o in session.get_outputs()]

    async def infer(request: Request) -> Response:
        body = orjson.loads(await request.body())
        feeds = {i["name"]: np.asarray(i["data"], dtype=np.float32).reshape(i["shape"]) for i in body["inputs"]}
        results = session.run(output_names, feeds)  # one call per request, on the event loop
        outputs = [
            {"name": n, "datatype": "FP32", "shape": list(r.shape), "data": r.ravel().tolist()}
            for n, r in zip(output_names, results)
        ]
        return Response(
            orjson.dumps({"model_name": request.path_params["name"], "outputs": outputs}), media_type="application/json"
        )

    async def ready(request: Request) -> Response:
        return Response(b'{"ready": true}', media_type="application/json")

    return Starlette(
        routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"]), Route("/v2/health/ready", ready)]
    )


def fastapi_app(onnx_path: str):
    from fastapi import FastAPI
    from pydantic import BaseModel

    class Tensor(BaseModel):
        name: str
        shape: list[int]
        datatype: str
        data: list[float]

    class InferRequest(BaseModel):
        inputs: list[Tensor]

    session = session_for(onnx_path)
    output_names = [o.name for o in session.get_outputs()]
    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: InferRequest) -> dict:
        feeds = {t.name: np.asarray(t.data, dtype=np.float32).reshape(t.shape) for t in request.inputs}
        results = session.run(output_names, feeds)  # one call per request, on the event loop (async def: no thread hop)
        return {
            "model_name": name,
            "outputs": [
                {"name": n, "datatype": "FP32", "shape": list(r.shape), "data": r.ravel().tolist()}
                for n, r in zip(output_names, results)
            ],
        }

    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {"ready": True}

    return app


if __name__ == "__main__":
    make = {"starlette": starlette_app, "fastapi": fastapi_app}[sys.argv[3] if len(sys.argv) > 3 else "starlette"]
    uvicorn.run(
        make(sys.argv[1]),
        host="127.0.0.1",
        port=int(sys.argv[2]),
        log_level="warning",
        access_log=False,
        server_header=False,
    )
