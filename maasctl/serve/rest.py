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
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maasctl.inputs.kinds import media_type
from maasctl.inputs.uploads import Part, body_sources, form_sources
from maasctl.protocol.errors import InferenceError, InvalidInput, PayloadTooLarge
from maasctl.protocol.v2 import HEADER_LENGTH, json_object
from maasctl.serve.access_log import AccessLog
from maasctl.serve.auth import BearerAuth
from maasctl.serve.batching import Overloaded
from maasctl.serve.dataplane import DataPlane, Upload
from maasctl.serve.memory import DecodingFull, JsonTooLarge
from maasctl.serve.metrics import CONTENT_TYPE

log = logging.getLogger("maasctl.serve")
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_TOP_K = 1000
HEADER_LENGTH_KEY = HEADER_LENGTH.lower().encode()  # ASGI header names come lower-case
JSON_TYPE = (b"content-type", b"application/json")
MAX_CACHED_TARGETS = 1024  # parsed infer paths kept; clients choose paths, so the cache is bounded


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
                # POST is answered by InferDispatch before routing; the route gives other methods 405 (Allow: POST)
                Route(prefix + "/infer", _answered_by_dispatch, methods=["POST"]),
                Route(prefix + "/predict", self.predict, methods=["POST"]),
            ]
        return routes


def create_app(
    dataplane: DataPlane,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    token: str | None = None,
    access_log: bool = False,
    poll_seconds: float = 0,
    drain_seconds: float | None = None,
) -> ASGIApp:
    """The ASGI app. `token`: require `Authorization: Bearer <token>` on all but the health probes (see auth.py).
    `access_log`: one JSON line per request on the `maasctl.access` logger. `poll_seconds`: look for new, changed
    and removed model versions in the repository this often (0: only at start and on explicit load).
    `drain_seconds`: the server's --drain-seconds; requests it cancels are answered 503 (see AnswerCutRequests)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        poller = asyncio.create_task(_poll(dataplane, poll_seconds)) if poll_seconds else None
        yield
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        await dataplane.close()  # after uvicorn has drained in-flight requests

    starlette = Starlette(
        routes=Endpoints(dataplane, max_body_bytes).routes(),
        lifespan=lifespan,
        exception_handlers={
            InferenceError: _on_inference_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
    )
    inner: ASGIApp = starlette if drain_seconds is None else AnswerCutRequests(starlette, drain_seconds)
    app: ASGIApp = InferDispatch(inner, dataplane, max_body_bytes, drain_seconds)
    # Plain ASGI wrappers, outside both the infer path and Starlette, so they cover every request alike.
    if token is not None:
        app = BearerAuth(app, token=token)
    if access_log:
        app = AccessLog(app)  # outermost: 401s are logged too
    return app


class InferDispatch:
    """POST /v2/models/{name}[/versions/{version}]/infer goes straight to the dataplane; every other request to the
    Starlette app. Infer is the hot path: under load Starlette's layers (error and exception middleware, routing,
    the Request and Response objects, a send wrapper per layer) took more of each request's CPU than decoding,
    batching and onnxruntime together (README, "where the time goes"). The behaviour is the routes': the same body
    limits and budget, the same errors as {"error": ...} with the same statuses and headers."""

    def __init__(
        self, app: ASGIApp, dataplane: DataPlane, max_body_bytes: int, drain_seconds: float | None = None
    ) -> None:
        self.app, self.dataplane, self.max_body_bytes = app, dataplane, max_body_bytes
        self.drain_seconds = drain_seconds  # see AnswerCutRequests; None: a cancelled request stays cancelled
        self._targets: dict[str, tuple[str, str | None]] = {}  # infer path -> (name, version): parsed once

    # An infer request is answered in this one coroutine, body read and reply sent included: each further coroutine
    # is one more to create and to resume on every request.
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not (path := scope["path"]).endswith("/infer"):
            await self.app(scope, receive, send)
            return
        target = self._targets.get(path)
        if target is None and (target := _infer_target(path)) is not None and len(self._targets) < MAX_CACHED_TARGETS:
            self._targets[path] = target  # paths only, no models: a load or unload changes nothing here
        if target is None:
            await self.app(scope, receive, send)
            return
        declared = header_length = None
        for key, value in scope["headers"]:  # the first of each, as starlette's Headers.get
            if key == b"content-length" and declared is None:
                declared = value.decode("latin-1")
            elif key == HEADER_LENGTH_KEY and header_length is None:
                header_length = value.decode("latin-1")
        budget = self.dataplane.body_budget
        try:
            try:
                limit, reserved = budget.reserve(declared, header_length, self.max_body_bytes)  # see memory.py
                try:
                    message = await receive()  # the whole body in one message, usually: read here, no coroutine
                    body = message.get("body", b"")
                    # One whole message within the limit is the body; anything else goes through body_chunks' rule
                    if message.get("more_body", False) or message["type"] != "http.request" or len(body) > limit:
                        body = await receive_body(receive, declared, limit, first=message)
                    content, headers = await self.dataplane.infer(*target, body, header_length)
                finally:
                    budget.held -= reserved
            except (DecodingFull, JsonTooLarge):
                # Read and drop the body, so the client, still sending it, gets the 503 or 413 rather than a reset
                await receive_body(receive, declared, self.max_body_bytes, keep=False)
                raise
        except InferenceError as exc:
            content, status, headers = _error_reply(exc, "POST", path)
            await _send(send, status, b"application/json", content, headers)
            return
        except ClientDisconnect:
            return  # nobody to answer
        except asyncio.CancelledError as cancelled:  # here, not in a wrapper: one coroutine less per request
            if self.drain_seconds is None:
                raise
            await answer_cut(send, self.drain_seconds, cancelled)
            return
        except Exception as exc:
            log.exception("internal error on POST %s", path)
            content = orjson.dumps({"error": f"internal error: {exc.__class__.__name__}"})
            await _send(send, 500, b"application/json", content, {})
            return
        raw = [(b"content-length", str(len(content)).encode()), JSON_TYPE]
        if headers:  # binary outputs
            raw = [raw[0], (b"content-type", b"application/octet-stream"), *_raw_headers(headers)]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": content})


class AnswerCutRequests:
    """When --drain-seconds runs out, uvicorn cancels the requests still running; uncaught, the cancellation reached
    the client as a plain-text 500 and the log as a traceback, for an orderly shutdown. It is answered here as any
    other error: 503 with {"error": ...} (the client may retry on another replica). Wraps the Starlette app;
    InferDispatch answers infer requests the same way itself (a wrapper is one more coroutine per request). No
    wrapper around `send` to tell whether the response had started (one more call per message): uvicorn refuses a
    second start, and that refusal says it."""

    def __init__(self, app: ASGIApp, drain_seconds: float) -> None:
        self.app, self.drain_seconds = app, drain_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError as cancelled:
            if scope["type"] != "http":
                raise
            await answer_cut(send, self.drain_seconds, cancelled)


async def answer_cut(send: Send, drain_seconds: float, cancelled: asyncio.CancelledError) -> None:
    """503 for a request the drain cut short, or `cancelled` raised again when its response had already started."""
    body = orjson.dumps(
        {"error": f"the server shut down before this request finished (--drain-seconds {drain_seconds:g})"}
    )
    try:
        await _send(send, 503, b"application/json", body, {})
    except RuntimeError:  # too late to answer: the response was under way (uvicorn refuses a second start)
        raise cancelled from None


async def _answered_by_dispatch(request: Request) -> Response:
    raise RuntimeError("POST .../infer reached the router: the app must be wrapped in InferDispatch")


def _infer_target(path: str) -> tuple[str, str | None] | None:
    """(name, version or None) for an infer path, as the routes would match it; None for any other path."""
    if not path.startswith("/v2/models/"):
        return None
    parts = path[len("/v2/models/") : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


async def body_chunks(
    receive: Receive, declared: str | None, limit: int, first: Message | None = None
) -> AsyncIterator[bytes]:
    """The request body's chunks, straight from the ASGI messages (`first`: its first message, already received), and
    the body limit's one rule, for every body reader: 413 as soon as the body is, or says it will be, over `limit`
    bytes."""
    if declared and declared.isdecimal() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    size, more = 0, True
    while more:
        message, first = first or await receive(), None
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        more = message.get("more_body", False)
        yield chunk


async def receive_body(
    receive: Receive, declared: str | None, limit: int, keep: bool = True, first: Message | None = None
) -> bytes:
    """The whole request body within `limit` (see body_chunks); `keep=False`: read and dropped."""
    chunks = [chunk async for chunk in body_chunks(receive, declared, limit, first) if keep]
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send: Send, status: int, media: bytes, content: bytes, headers: dict[str, str]) -> None:
    raw = [(b"content-length", str(len(content)).encode()), (b"content-type", media), *_raw_headers(headers)]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})


def _raw_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def _error_reply(exc: InferenceError, method: str, path: str) -> tuple[bytes, int, dict[str, str]]:
    """An InferenceError as the client sees it: {"error": ...}, its status, and headers."""
    if isinstance(exc, Overloaded):  # expected under load; the metrics count it, a log line per request would flood
        return orjson.dumps({"error": exc.message}), exc.status, {"Retry-After": "1"}
    if exc.status >= 500:
        log.error("%s %s: %s", method, path, exc.message)
    return orjson.dumps({"error": exc.message}), exc.status, {}


async def _on_inference_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InferenceError)
    content, status, headers = _error_reply(exc, request.method, request.url.path)
    return Response(content, status_code=status, media_type="application/json", headers=headers)


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
    return await receive_body(request.receive, request.headers.get("content-length"), limit)


def _limited_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body's chunks within `limit` (see body_chunks)."""
    return body_chunks(request.receive, request.headers.get("content-length"), limit)


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
