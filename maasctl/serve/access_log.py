"""`--access-log`: one JSON object per request on the `maasctl.access` logger, written when the response ends."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

import orjson

log = logging.getLogger("maasctl.access")


class AccessLog:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status, sent = 500, 0  # 500: the app raised before answering (the error middleware answers 500)

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            headers = dict(scope["headers"])
            client = scope.get("client")
            length = headers.get(b"content-length", b"")
            entry = {
                "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "client": f"{client[0]}:{client[1]}" if client else None,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                "bytes_in": int(length) if length.isdigit() else None,
                "bytes_out": sent,
                "user_agent": headers.get(b"user-agent", b"").decode("latin-1") or None,
            }
            log.info(orjson.dumps(entry).decode())
