"""REST transport for the Open Inference Protocol: decode HTTP, call the dataplane, encode. Nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from maasctl.protocol.errors import InferenceError, InvalidInput, PayloadTooLarge
from maasctl.protocol.v2 import json_object
from maasctl.serve import upload
from maasctl.serve.access_log import AccessLog
from maasctl.serve.auth import BearerAuth
from maasctl.serve.batching import Overloaded
from maasctl.serve.dataplane import DataPlane
from maasctl.serve.memory import DecodingFull, JsonTooLarge, declared_size
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
    poll_seconds: float = 0,
) -> Starlette:
    """The ASGI app. `token`: require `Authorization: Bearer <token>` on all but the health probes (see auth.py).
    `access_log`: one JSON line per request on the `maasctl.access` logger. `poll_seconds`: look for new, changed
    and removed model versions in the repository this often (0: only at start and on explicit load)."""

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
        header_length = request.headers.get("inference-header-content-length")
        declared = request.headers.get("content-length")
        try:
            limit = dataplane.body_budget.infer_limit(declared, header_length, max_body_bytes)
            with dataplane.body_budget.hold(declared_size(declared, limit)):  # see memory.py
                body = await _read_body(request, limit)
                content, headers = await dataplane.infer(p["name"], p.get("version"), body, header_length)
        except (DecodingFull, JsonTooLarge):
            async for _ in _limited_stream(request, max_body_bytes):  # read and drop the body, so the client,
                pass  # still sending it, gets the 503 or 413 rather than a reset connection
            raise
        media = "application/octet-stream" if headers else "application/json"
        return Response(content, media_type=media, headers=headers)

    async def predict(request: Request) -> Response:
        """Files in (multipart, or a raw body of one kind), labels out: see upload.py."""
        p = request.path_params
        model = dataplane.model(p["name"], p.get("version"))  # 404 before any body is read
        with dataplane.counted(model):  # one request in the metrics, however many batches its files make
            top_k = upload.parse_top_k(request.query_params.getlist("top_k"))
            content_type = request.headers.get("content-type")
            if upload.media_type(content_type) == "multipart/form-data":
                sources = upload.form_sources(await _form_parts(request, max_body_bytes), model.manifest)
            else:
                sources = upload.body_sources(content_type, await _read_body(request, max_body_bytes), model.manifest)
            return json_response(await upload.predict(dataplane, model, sources, top_k))

    async def repository_index(request: Request) -> Response:
        options = await _json_options(request, max_body_bytes)
        ready_only = options.get("ready", False)
        if not isinstance(ready_only, bool):
            raise InvalidInput(f'"ready" must be true or false, not {ready_only!r}')
        return json_response(dataplane.repository_index(ready_only))

    async def load(request: Request) -> Response:
        parameters = (await _json_options(request, max_body_bytes)).get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput('"parameters" must be an object')
        if parameters:
            # Triton lets a load override the config or upload files; maasctl serves what export filed, as filed.
            raise InvalidInput(
                f"load parameters are not supported (got: {', '.join(sorted(parameters))}); export a new version instead"
            )
        await dataplane.load_model(request.path_params["name"])
        return Response(status_code=200)

    async def unload(request: Request) -> Response:
        await _json_options(request, max_body_bytes)  # Triton's unload_dependents has no meaning here
        await dataplane.unload_model(request.path_params["name"])
        return Response(status_code=200)

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
        return json_response(
            {"error": f"{request.method} {request.url.path}: {exc.detail}"}, exc.status_code, exc.headers
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return json_response({"error": f"internal error: {exc.__class__.__name__}"}, 500)

    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/metrics", metrics),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", unload, methods=["POST"]),
    ]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(prefix, model_metadata),
            Route(prefix + "/ready", model_ready),
            Route(prefix + "/manifest", model_manifest),
            Route(prefix + "/infer", infer, methods=["POST"]),
            Route(prefix + "/predict", predict, methods=["POST"]),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        poller = asyncio.create_task(_poll(dataplane, poll_seconds)) if poll_seconds else None
        yield
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
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


async def _poll(dataplane: DataPlane, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await dataplane.poll_repository()
        except Exception:  # a bad poll (a repository on a flaky mount) must not end polling, nor the server
            log.exception("polling the model repository failed; trying again in %g s", every)


async def _json_options(request: Request, limit: int) -> dict:
    """The optional JSON object body of a repository request; empty when there is none."""
    body = await _read_body(request, limit)
    return json_object(body) if body.strip() else {}


async def _read_body(request: Request, limit: int) -> bytes:
    return b"".join([chunk async for chunk in _limited_stream(request, limit)])


async def _limited_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body's chunks; 413 as soon as it is (or says it will be) over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdecimal() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        yield chunk


async def _form_parts(request: Request, limit: int) -> list[upload.Part]:
    """A multipart/form-data body's parts, read within the body limit (starlette's own per-part limit lifted to
    it: the body limit is the one a client is told about)."""
    parser = MultiPartParser(request.headers, _limited_stream(request, limit), max_part_size=limit)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidInput(f"not a readable multipart/form-data body: {exc.message}") from None
    try:
        parts = []
        for field, value in form.multi_items():
            if isinstance(value, UploadFile):
                parts.append(upload.Part(field, value.filename or "", value.content_type, await value.read()))
            else:
                parts.append(upload.Part(field, None, None, value.encode("utf-8")))
        return parts
    finally:
        await form.close()
