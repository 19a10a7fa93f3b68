"""Start the server: load every model first (a bad --device fails here, before any port is bound), then uvicorn."""

from __future__ import annotations

import logging

from maasctl.repository import ModelRepository
from maasctl.serve.dataplane import DataPlane
from maasctl.serve.rest import create_app


def serve(repo: str, host: str, port: int, device: str, max_body_bytes: int, access_log: bool, drain_seconds: float) -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dataplane = DataPlane(ModelRepository(repo), device)
    dataplane.load_all()
    app = create_app(dataplane, max_body_bytes)
    # uvicorn handles SIGINT/SIGTERM: stop accepting, let in-flight requests finish (up to drain_seconds), exit 0.
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        access_log=access_log,
        timeout_graceful_shutdown=drain_seconds,
        server_header=False,
    )
