"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` on grpc.aio, over the same DataPlane as
REST, so both share the models, dynamic batchers, queue limits and metrics.

It runs in the same process and on the same event loop as uvicorn (see server.py): a model's batcher is bound to
one event loop, and sharing it is what makes gRPC and REST requests batch together. The handlers are registered
by the service's wire name, so the message classes (maasctl/protocol/oip.proto, package `maasctl.oip`) never clash
with a client's own in the same process.

Served: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer, RepositoryIndex,
RepositoryModelLoad, RepositoryModelUnload. Anything else (ModelStreamInfer, ModelConfig, shared memory...)
answers UNIMPLEMENTED. With a token, every RPC but the two health checks needs `authorization: Bearer <token>`
metadata, as every REST path but the health probes needs the header.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from maasctl.errors import Unavailable
from maasctl.protocol import grpc_codec as codec
from maasctl.protocol import oip_pb2 as pb
from maasctl.protocol.errors import InferenceError, InvalidInput, NotFound
from maasctl.serve.batching import Overloaded
from maasctl.serve.dataplane import DataPlane

log = logging.getLogger("maasctl.serve")

SERVICE = "inference.GRPCInferenceService"
OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})

# the REST status each error carries -> the gRPC status code Triton and KServe answer with
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class OipService:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        try:
            self.dataplane.model(request.name, request.version or None)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        return codec.model_metadata(self.dataplane.model_metadata(request.name, request.version or None))

    async def ModelInfer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        # grpc has received the message (within --max-body-mb); its bytes count against the server-wide bound
        # while its tensors are decoded and inferred, as a REST body's do
        with self.dataplane.body_budget.hold(request.ByteSize()):
            response = await self.dataplane.infer_decoded(
                request.model_name,
                request.model_version or None,
                lambda signature: codec.decode_infer_request(request, signature),
            )
            return codec.encode_infer_response(response)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
        rows = self.dataplane.repository_index(request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest) -> pb.RepositoryModelLoadResponse:
        if request.parameters:
            # as REST: Triton lets a load override the config or upload files; maasctl serves what export filed
            names = ", ".join(sorted(codec.parameters(request.parameters)))
            raise InvalidInput(f"load parameters are not supported (got: {names}); export a new version instead")
        await self.dataplane.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest) -> pb.RepositoryModelUnloadResponse:
        await self.dataplane.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def handler(service: OipService, token: str | None) -> grpc.GenericRpcHandler:
    methods = {}
    for name in (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    ):
        request_type, response_type = getattr(pb, name + "Request"), getattr(pb, name + "Response")
        rpc = _rpc(name, getattr(service, name), None if name in OPEN_METHODS else token)
        methods[name] = grpc.unary_unary_rpc_method_handler(
            rpc, request_deserializer=request_type.FromString, response_serializer=response_type.SerializeToString
        )
    return grpc.method_handlers_generic_handler(SERVICE, methods)


def _rpc(name: str, method: Callable[[Any], Awaitable[Any]], token: str | None):
    """One RPC: the token check, then the method, its errors turned into gRPC status codes."""
    expected = token.encode() if token is not None else None

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if expected is not None:
            refusal = _refusal(context.invocation_metadata() or (), expected)
            if refusal:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)
        try:
            return await method(request)
        except InferenceError as exc:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if isinstance(exc, Overloaded) else STATUS_CODES.get(exc.status)
            if code is None:
                code = grpc.StatusCode.INTERNAL
                log.error("gRPC %s: %s", name, exc.message)
            message = exc.message
        except Exception as exc:
            log.exception("internal error in gRPC %s", name)
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {exc.__class__.__name__}"
        await context.abort(code, message)  # outside the try: abort raises to end the call

    return call


def _refusal(metadata: Any, expected: bytes) -> str | None:
    """Why the call's `authorization` metadata does not carry the token; None when it does."""
    for key, value in metadata:
        if key == "authorization":
            scheme, _, credential = str(value).partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), expected):
                return None
            return "invalid token"
    return "authentication required: send 'authorization: Bearer <token>' metadata"


async def start(
    dataplane: DataPlane, host: str, port: int, token: str | None, max_message_bytes: int, reuse_port: bool = False
) -> grpc.aio.Server:
    """Bind and start the gRPC server on the running event loop. `max_message_bytes` is the REST body limit: a
    larger request gets RESOURCE_EXHAUSTED from grpc itself, before it is decoded."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),
        # grpc sets SO_REUSEPORT by default: a second server on a busy port would start and get half the traffic
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers([handler(OipService(dataplane), token)])
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise Unavailable(f"gRPC cannot listen on {address}: {exc}") from None
    if not bound:
        raise Unavailable(f"gRPC cannot listen on {address} (in use?)")
    await server.start()
    log.info("gRPC (inference.GRPCInferenceService) listening on %s", address)
    return server
