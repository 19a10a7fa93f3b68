"""REST transport for the Open Inference Protocol: decode HTTP, call the dataplane, encode. Nothing more."""

from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from maasctl.protocol.errors import InferenceError, PayloadTooLarge
from maasctl.serve.access_log import AccessLog
from maasctl.serve.auth import BearerAuth
from maasctl.serve.batching import Overloaded
from maasctl.serve.dataplane import DataPlane
from maasctl.serve.metrics import CONTENT_TYPE

log = logging.getLogger("maasctl.serve")
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024


def json_response(content: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json", headers=headers)


def create_app(
    dataplane: DataPlane,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    token: str | None = None,
    access_log: bool = False,
) -> Starlette:
    """The ASGI app. `token`: require `Authorization: Bearer <token>` on all but the health probes (see auth.py).
    `access_log`: one JSON line per request on the `maasctl.access` logger."""

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        # 200 means ready; 503 (a 4xx/5xx means "false" to OIP clients) while loading or when a model failed.
        return json_response({"ready": dataplane.ready}, 200 if dataplane.ready else 503)

    async def server_metadata(request: Request) -> Response:
        return json_response(dataplane.server_metadata())

    async def model_metadata(request: Request) -> Response:
        p = request.path_params
        return json_response(dataplane.model_metadata(p["name"], p.get("version")))

    async def model_ready(request: Request) -> Response:
        p = request.path_params
        dataplane.model(p["name"], p.get("version"))  # 404 when unknown
        return json_response({"name": p["name"], "ready": True})

    async def model_manifest(request: Request) -> Response:
        p = request.path_params
        return json_response(dataplane.model_manifest(p["name"], p.get("version")))

    async def infer(request: Request) -> Response:
        p = request.path_params
        body = await _read_body(request, max_body_bytes)
        header_length = request.headers.get("inference-header-content-length")
        content, headers = await dataplane.infer(p["name"], p.get("version"), body, header_length)
        media = "application/octet-stream" if headers else "application/json"
        return Response(content, media_type=media, headers=headers)

    async def metrics(request: Request) -> Response:
        return Response(dataplane.metrics.render(), media_type=CONTENT_TYPE)

    async def on_inference_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InferenceError)
        if isinstance(exc, Overloaded):  # expected under load; the metrics count it, a log line per request would flood
            response = json_response({"error": exc.message}, exc.status)
            response.headers["Retry-After"] = "1"
            return response
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return json_response({"error": exc.message}, exc.status)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        # Keep starlette's headers: a 405 must say which methods are allowed (Allow: POST).
        return json_response({"error": f"{request.method} {request.url.path}: {exc.detail}"}, exc.status_code, exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return json_response({"error": f"internal error: {exc.__class__.__name__}"}, 500)

    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/metrics", metrics),
    ]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(prefix, model_metadata),
            Route(prefix + "/ready", model_ready),
            Route(prefix + "/manifest", model_manifest),
            Route(prefix + "/infer", infer, methods=["POST"]),
        ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await dataplane.close()  # after uvicorn has drained in-flight requests

    middleware = []
    if access_log:
        middleware.append(Middleware(AccessLog))  # outermost: 401s are logged too
    if token is not None:
        middleware.append(Middleware(BearerAuth, token=token))
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={InferenceError: on_inference_error, HTTPException: on_http_error, Exception: on_unexpected},
    )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
