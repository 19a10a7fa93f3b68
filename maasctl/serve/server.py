"""Start the server: load every model first (a bad --device fails here, before any port is bound), then uvicorn."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import uvicorn

from maasctl.repository import ModelRepository
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


def serve(repo: str, host: str, port: int, device: str, max_body_bytes: int, access_log: bool, drain_seconds: float) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dataplane = DataPlane(ModelRepository(repo), device)
    dataplane.load_all()
    config = uvicorn.Config(
        create_app(dataplane, max_body_bytes),
        host=host,
        port=port,
        log_level="info",
        access_log=access_log,
        timeout_graceful_shutdown=drain_seconds,
        server_header=False,
    )
    _Server(config).run()
