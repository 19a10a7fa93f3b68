"""Bearer token authentication, as ASGI middleware in front of every route but the health probes.

Open without a token: `/v2/health/live` and `/v2/health/ready`, so load balancers and Kubernetes probes need
no secret. Everything else (inference, model and server metadata, model ready, the manifest, /metrics, and any
path not served at all) needs `Authorization: Bearer <token>`; the token is compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class BearerAuth:
    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("an empty token would let anyone in")
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        credential = _bearer(scope)
        if credential is not None and hmac.compare_digest(credential, self._token):
            await self.app(scope, receive, send)
            return
        if credential is None:
            message, challenge = (
                "authentication required: send 'Authorization: Bearer <token>'",
                b'Bearer realm="maasctl"',
            )
        else:
            message, challenge = "invalid token", b'Bearer realm="maasctl", error="invalid_token"'
        body = orjson.dumps({"error": message})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", challenge),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credential = value.partition(b" ")
            if scheme.lower() == b"bearer" and credential.strip():
                return credential.strip()
            return b""  # some other scheme, or an empty credential: present but wrong
    return None
