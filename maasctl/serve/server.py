"""Start the server: load every model first (a bad --device fails here, before any port is bound), then uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import sys
from collections.abc import Iterator
from typing import Any

import orjson
import uvicorn

from maasctl.repository import ModelRepository
from maasctl.serve.batching import BatchingConfig
from maasctl.serve.dataplane import DataPlane
from maasctl.serve.rest import create_app


class _Server(uvicorn.Server):
    """uvicorn drains in-flight requests on SIGINT/SIGTERM, then re-raises the signal so the process dies by
    it. After a completed drain the shutdown was orderly, so maasctl exits 0 instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


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
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if access_log:
        _json_lines_to_stdout(logging.getLogger("maasctl.access"))
    log = logging.getLogger("maasctl.serve")
    if token is None and not _is_loopback(host):
        log.warning(
            "listening on %s without a token: anyone who can reach the port can use it (set MAASCTL_TOKEN)", host
        )
    dataplane = DataPlane(ModelRepository(repo), device, batching, version_policy)
    dataplane.load_all()
    config = uvicorn.Config(
        _AnswerCutRequests(
            create_app(dataplane, max_body_bytes, token=token, access_log=access_log, poll_seconds=poll_seconds),
            drain_seconds,
        ),
        host=host,
        port=port,
        log_level="info",
        access_log=False,  # ours is JSON (--access-log); uvicorn's plain-text one would repeat it
        timeout_graceful_shutdown=drain_seconds,
        server_header=False,
    )
    _Server(config).run()


class _AnswerCutRequests:
    """When --drain-seconds runs out, uvicorn cancels the requests still running; uncaught, the cancellation reached
    the client as a plain-text 500 and the log as a traceback, for an orderly shutdown. It is answered here as any
    other error: 503 with {"error": ...} (the client may retry on another replica)."""

    def __init__(self, app: Any, drain_seconds: float) -> None:
        self.app, self.drain_seconds = app, drain_seconds

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if scope["type"] != "http" or started:  # too late to answer: the response was under way
                raise
            body = orjson.dumps(
                {"error": f"the server shut down before this request finished (--drain-seconds {self.drain_seconds:g})"}
            )
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})


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
