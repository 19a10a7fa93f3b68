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

from maasctl.inputs.kinds import media_type
from maasctl.inputs.uploads import Part, body_sources, form_sources
from maasctl.protocol.errors import InferenceError, InvalidInput, PayloadTooLarge
from maasctl.protocol.v2 import HEADER_LENGTH, json_object
from maasctl.serve.access_log import AccessLog
from maasctl.serve.auth import BearerAuth
from maasctl.serve.batching import Overloaded
from maasctl.serve.dataplane import DataPlane, Upload
from maasctl.serve.memory import DecodingFull, JsonTooLarge, declared_size
from maasctl.serve.metrics import CONTENT_TYPE

log = logging.getLogger("maasctl.serve")
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_TOP_K = 1000


def json_response(content: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json", headers=headers)


class Endpoints:
    """The Open Inference Protocol's REST endpoints: each decodes the HTTP request, calls the dataplane, and encodes
    its answer. Errors are raised as `InferenceError`s and answered by `create_app`'s handlers."""

    def __init__(self, dataplane: DataPlane, max_body_bytes: int) -> None:
        self.dataplane, self.max_body_bytes = dataplane, max_body_bytes

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        # 200 means ready; 503 (a 4xx/5xx means "false" to OIP clients) while loading or when a model failed.
        ready = self.dataplane.ready
        return json_response({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response(self.dataplane.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        return json_response(self.dataplane.model_metadata(*_model_path(request)))

    async def model_ready(self, request: Request) -> Response:
        name, version = _model_path(request)
        self.dataplane.model(name, version)  # 404 when unknown
        return json_response({"name": name, "ready": True})

    async def model_manifest(self, request: Request) -> Response:
        return json_response(self.dataplane.model_manifest(*_model_path(request)))

    async def infer(self, request: Request) -> Response:
        header_length = request.headers.get(HEADER_LENGTH)
        declared = request.headers.get("content-length")
        budget = self.dataplane.body_budget
        try:
            limit = budget.infer_limit(declared, header_length, self.max_body_bytes)
            with budget.hold(declared_size(declared, limit)):  # see memory.py
                body = await _read_body(request, limit)
                content, headers = await self.dataplane.infer(*_model_path(request), body, header_length)
        except (DecodingFull, JsonTooLarge):
            async for _ in _limited_stream(request, self.max_body_bytes):  # read and drop the body, so the client,
                pass  # still sending it, gets the 503 or 413 rather than a reset connection
            raise
        media = "application/octet-stream" if headers else "application/json"
        return Response(content, media_type=media, headers=headers)

    async def predict(self, request: Request) -> Response:
        """Files in (multipart, or a raw body of one kind), labels out: see maasctl.inputs.uploads."""

        async def read(manifest: dict) -> Upload:
            top_k = parse_top_k(request.query_params.getlist("top_k"))
            content_type = request.headers.get("content-type")
            if media_type(content_type) == "multipart/form-data":
                parts = await _form_parts(request, self.max_body_bytes)
                return Upload(form_sources(parts, manifest), top_k)
            return Upload(body_sources(content_type, await _read_body(request, self.max_body_bytes)), top_k)

        return json_response(await self.dataplane.predict(*_model_path(request), read))

    async def repository_index(self, request: Request) -> Response:
        options = await _json_options(request, self.max_body_bytes)
        ready_only = options.get("ready", False)
        if not isinstance(ready_only, bool):
            raise InvalidInput(f'"ready" must be true or false, not {ready_only!r}')
        return json_response(self.dataplane.repository_index(ready_only))

    async def load(self, request: Request) -> Response:
        parameters = (await _json_options(request, self.max_body_bytes)).get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput('"parameters" must be an object')
        if parameters:
            # Triton lets a load override the config or upload files; maasctl serves what export filed, as filed.
            raise InvalidInput(
                f"load parameters are not supported (got: {', '.join(sorted(parameters))}); "
                "export a new version instead"
            )
        await self.dataplane.load_model(request.path_params["name"])
        return Response(status_code=200)

    async def unload(self, request: Request) -> Response:
        await _json_options(request, self.max_body_bytes)  # Triton's unload_dependents has no meaning here
        await self.dataplane.unload_model(request.path_params["name"])
        return Response(status_code=200)

    async def metrics(self, request: Request) -> Response:
        return Response(self.dataplane.metrics.render(), media_type=CONTENT_TYPE)

    def routes(self) -> list[Route]:
        routes = [
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready),
            Route("/v2", self.server_metadata),
            Route("/metrics", self.metrics),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            Route("/v2/repository/models/{name}/load", self.load, methods=["POST"]),
            Route("/v2/repository/models/{name}/unload", self.unload, methods=["POST"]),
        ]
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            routes += [
                Route(prefix, self.model_metadata),
                Route(prefix + "/ready", self.model_ready),
                Route(prefix + "/manifest", self.model_manifest),
                Route(prefix + "/infer", self.infer, methods=["POST"]),
                Route(prefix + "/predict", self.predict, methods=["POST"]),
            ]
        return routes


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
        routes=Endpoints(dataplane, max_body_bytes).routes(),
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            InferenceError: _on_inference_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
    )


async def _on_inference_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InferenceError)
    if isinstance(exc, Overloaded):  # expected under load; the metrics count it, a log line per request would flood
        response = json_response({"error": exc.message}, exc.status)
        response.headers["Retry-After"] = "1"
        return response
    if exc.status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
    return json_response({"error": exc.message}, exc.status)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    # Keep starlette's headers: a 405 must say which methods are allowed (Allow: POST).
    return json_response({"error": f"{request.method} {request.url.path}: {exc.detail}"}, exc.status_code, exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return json_response({"error": f"internal error: {exc.__class__.__name__}"}, 500)


def _model_path(request: Request) -> tuple[str, str | None]:
    """The model name and version (None: the default one) in a /v2/models/... path."""
    return request.path_params["name"], request.path_params.get("version")


def parse_top_k(values: list[str]) -> int:
    """The `top_k` query parameter of /predict: how many labels each prediction lists (default 1)."""
    if not values:
        return 1
    if len(values) > 1:
        raise InvalidInput(f"top_k given {len(values)} times; give it once")
    value = values[0].strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 6 and 1 <= int(value) <= MAX_TOP_K):
        raise InvalidInput(f"top_k must be a whole number from 1 to {MAX_TOP_K}, not {values[0]!r}")
    return int(value)


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


async def _form_parts(request: Request, limit: int) -> list[Part]:
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
                parts.append(Part(field, value.filename or "", value.content_type, await value.read()))
            else:
                parts.append(Part(field, None, None, value.encode("utf-8")))
        return parts
    finally:
        await form.close()
