"""One write per HTTP response: uvicorn's httptools protocol with the response head held until its first body bytes.

uvicorn writes a response's status line and headers when the app sends `http.response.start`, and the body when it
sends `http.response.body`: two writes, so two TCP segments, and on the client two reads and often two wake-ups.
For a small JSON reply (an infer answer is a few hundred bytes) that second write was a large part of a request's
cost: under `wrk -c16` on 2 cores, one write instead of two took maasctl's server CPU from 108 to 97 µs a request
(README, "Serving hot path"). Here the protocol's transport holds the head and writes it together with the body;
a head with no body after it in the same step of the event loop (a HEAD request, a response cut short) is written
at the end of that step, so nothing waits longer than one turn of the loop and the order of bytes never changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's `http="httptools"` protocol, writing each response's head and first body bytes at once."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeldHeadTransport(transport, self.loop))  # type: ignore[arg-type]


class HeldHeadTransport:
    """A transport that holds a response head (a write of a whole status line and header block, as uvicorn makes
    it) until the next write, or the end of the event loop's current step, or `close`, whichever comes first.
    Everything else goes straight to the wrapped transport."""

    __slots__ = ("_held", "_loop", "_transport", "is_closing")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._held: bytes | None = None
        # Asked once per response (uvicorn's on_response_complete): the wrapped transport's own method, bound here,
        # costs a tenth of a failed attribute lookup and `__getattr__` (about 0.5 µs).
        self.is_closing = transport.is_closing

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = b"".join((self._held, data)), None
        elif data[:5] == b"HTTP/" and data[-4:] == b"\r\n\r\n" and data[9:10] != b"1":  # a head; not 100 Continue
            self._held = data
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        """Write the held head, if any (dropped when the connection is closing: nobody would read it)."""
        if self._held is not None:
            data, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # get_extra_info, pause_reading, ...: not once per request
        return getattr(self._transport, name)
