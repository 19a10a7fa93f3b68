"""The baseline serve.py compares against: a hand-written Starlette app (FastAPI is not installed here; Starlette is
what maasctl itself uses), one onnxruntime call per request on the v2 JSON body, no batching, no checks.

    python benchmarks/_baseline_app.py MODEL.onnx PORT

It answers POST /v2/models/{name}/infer with a v2 JSON response, and GET /v2/health/ready. The session is made
like maasctl's (ORT_ENABLE_ALL, onnxruntime's default threads), and uvicorn runs with the same loop and HTTP
parser choice (uvloop + httptools when installed) and no access log, so the difference is maasctl's own work.
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def create_app(onnx_path: str) -> Starlette:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(onnx_path, sess_options=options, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]

    async def infer(request: Request) -> Response:
        body = orjson.loads(await request.body())
        feeds = {i["name"]: np.asarray(i["data"], dtype=np.float32).reshape(i["shape"]) for i in body["inputs"]}
        results = session.run(output_names, feeds)  # one call per request, on the event loop
        outputs = [{"name": n, "datatype": "FP32", "shape": list(r.shape), "data": r.ravel().tolist()}
                   for n, r in zip(output_names, results)]
        return Response(orjson.dumps({"model_name": request.path_params["name"], "outputs": outputs}),
                        media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b'{"ready": true}', media_type="application/json")

    return Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"]), Route("/v2/health/ready", ready)])


if __name__ == "__main__":
    uvicorn.run(create_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
                access_log=False, server_header=False)
