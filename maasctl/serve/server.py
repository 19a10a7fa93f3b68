"""Start the server: load every model first (a bad --device fails here, before any port is bound), then uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn

from maasctl.errors import Unavailable, UsageError
from maasctl.repository import ModelRepository
from maasctl.runtime.session import select_providers
from maasctl.serve.batching import BatchingConfig
from maasctl.serve.dataplane import DataPlane
from maasctl.serve.memory import BodyBudget
from maasctl.serve.one_write import OneWriteHttpToolsProtocol
from maasctl.serve.rest import create_app
from maasctl.serve.workers import Worker, WorkerDataPlane


class _Server(uvicorn.Server):
    """uvicorn drains in-flight requests on SIGINT/SIGTERM, then re-raises the signal so the process dies by
    it. After a completed drain the shutdown was orderly, so maasctl exits 0 instead.

    With `start_grpc`, the gRPC server runs on the same event loop (the batchers are bound to it, so gRPC and REST
    requests share batches, queues and metrics): it binds before the HTTP port, and on SIGTERM it stops taking
    calls and drains alongside HTTP; the models are closed (the lifespan's shutdown) only after both drained."""

    start_grpc: Callable[[], Awaitable[Any]] | None = None
    follow: Callable[[], Awaitable[None]] | None = None  # --workers: apply the loads other workers took
    _grpc: Any = None
    _following: asyncio.Task | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.start_grpc is not None:
            self._grpc = await self.start_grpc()
        await super().startup(sockets)
        if self.follow is not None:
            self._following = asyncio.create_task(self.follow())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._following is not None:
            self._following.cancel()
        if self._grpc is None:
            await super().shutdown(sockets)
            return
        grpc_drained = asyncio.ensure_future(self._grpc.stop(self.config.timeout_graceful_shutdown))
        close_models = self.lifespan.shutdown

        async def after_grpc() -> None:  # uvicorn's shutdown ends with the lifespan's: hold it for gRPC
            await grpc_drained
            await close_models()

        self.lifespan.shutdown = after_grpc
        await super().shutdown(sockets)
        await grpc_drained


def serve(
    repo: str,
    host: str,
    port: int,
    device: str,
    max_body_bytes: int,
    access_log: bool,
    drain_seconds: float,
    batching: BatchingConfig | None = None,
    token: str | None = None,
    version_policy: str = "latest",
    poll_seconds: float = 0,
    exit_on_error: bool = True,
    grpc_port: int | None = None,
    body_budget: BodyBudget | None = None,
    worker: Worker | None = None,
) -> None:
    """One server process; with `worker`, one of several on the same port (see workers.py)."""
    check_device(device)  # before any model loads or port opens
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if access_log:
        _json_lines_to_stdout(logging.getLogger("maasctl.access"))
    log = logging.getLogger("maasctl.serve")
    if token is None and not _is_loopback(host):
        log.warning(
            "listening on %s without a token: anyone who can reach the port can use it (set MAASCTL_TOKEN)", host
        )
    plane = (ModelRepository(repo), device, batching, version_policy, body_budget)
    dataplane = DataPlane(*plane) if worker is None else WorkerDataPlane(*plane, worker=worker)
    dataplane.load_all()
    if exit_on_error:
        _exit_on_failed_loads(dataplane)
    app = create_app(
        dataplane,
        max_body_bytes,
        token=token,
        access_log=access_log,
        poll_seconds=poll_seconds,
        drain_seconds=drain_seconds,
    )
    server = _Server(_uvicorn_config(app, host, port, access_log, drain_seconds))
    if grpc_port is not None:
        from maasctl.serve import grpc_service  # grpcio is imported only when gRPC is asked for

        server.start_grpc = functools.partial(
            grpc_service.start, dataplane, host, grpc_port, token, max_body_bytes, reuse_port=worker is not None
        )
    if worker is None:
        server.run()
        return
    server.follow = functools.partial(worker.follow, dataplane)
    server.run(sockets=[worker.bind(host, port)])


def _uvicorn_config(app: Any, host: str, port: int, access_log: bool, drain_seconds: float) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        access_log=False,  # ours is JSON (--access-log); uvicorn's plain-text one would repeat it
        # uvicorn's X-Forwarded-For layer sets the client address, which only the access log reads: without it, one
        # ASGI layer (a coroutine, a header scan) less on every request.
        proxy_headers=access_log,
        http=OneWriteHttpToolsProtocol,  # each response's head and body in one write (see one_write.py)
        timeout_graceful_shutdown=drain_seconds,
        server_header=False,
    )


def check_device(device: str) -> None:
    """`--device cuda` without the CUDA execution provider: one message with the fix, exit 3, no port bound (each
    model failing to load with the same reason, and a server that never gets ready, told the user nothing)."""
    try:
        select_providers(device)
    except UsageError as exc:
        raise Unavailable(f"cannot serve: {exc}") from None


def _exit_on_failed_loads(dataplane: DataPlane) -> None:
    """Triton's --exit-on-error: a version that fails to load at start-up stops the server (exit 3), so a broken
    rollout shows as a crash-looping pod, not a replica that is never ready. Loads after start-up (polling, the
    load endpoint) keep the serving version instead."""
    failed = sorted(dataplane.served.failed.items())
    if failed:
        reasons = "; ".join(f"{name} version {version}: {f.reason}" for (name, version), f in failed)
        raise Unavailable(
            f"{len(failed)} model version(s) failed to load at start-up: {reasons}. Fix or remove them, or pass "
            "--no-exit-on-error to serve the models that did load"
        )


def _json_lines_to_stdout(logger: logging.Logger) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
