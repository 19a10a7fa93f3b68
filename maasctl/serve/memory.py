"""Memory under hostile input: how many request-body bytes the server holds for decoding at once, and the lower
limit on JSON tensors.

Where an infer request's memory goes (measured, one 38 MB JSON body of 6.4 million numbers to the digits model):
orjson's parse peaks at about 10× the body (its document tree, then a Python float object per number), and the
model used to run all 100,000 rows at once (onnxruntime's arena reached 1.9 GB and kept it; batching.py now runs
such a request in slices of --max-batch-size rows). A binary tensor is read in place from the body (about 1×).

So the bounds are:
- a JSON body (or the JSON header of a binary one) over `max_json_bytes` gets 413 before it is read: the transient
  of one JSON decode stays within about 10× that limit, and decoding runs on the event loop, one at a time;
- the bodies of requests being read, decoded and inferred at once total at most `max_bytes` (the declared
  Content-Length is reserved before reading); beyond it 503 with Retry-After, so many large requests at once
  cannot add up. A request that finds nothing else held is always admitted, so any body within the limits can
  be served on an idle server.
"""

from __future__ import annotations

from maasctl.protocol.errors import PayloadTooLarge
from maasctl.serve.batching import Overloaded

DEFAULT_MAX_DECODING_BYTES = 128 * 1024 * 1024
DEFAULT_MAX_JSON_BYTES = 16 * 1024 * 1024


class DecodingFull(Overloaded):
    """503 with Retry-After (gRPC: RESOURCE_EXHAUSTED): too many body bytes are being decoded right now."""


class JsonTooLarge(PayloadTooLarge):
    """413: more JSON than --max-json-mb, in a body within --max-body-mb (so worth reading to answer it)."""


class BodyBudget:
    """The server-wide bound on body bytes held for decoding, and the JSON limit; one per DataPlane, shared by
    its transports."""

    def __init__(
        self, max_bytes: int = DEFAULT_MAX_DECODING_BYTES, max_json_bytes: int = DEFAULT_MAX_JSON_BYTES
    ) -> None:
        self.max_bytes, self.max_json_bytes = max_bytes, max_json_bytes
        self.held = 0

    def hold(self, size: int) -> _Hold:
        """Reserve `size` bytes for one request's lifetime (`with budget.hold(size): ...`); DecodingFull when they do
        not fit beside what is held."""
        if self.held and self.held + size > self.max_bytes:
            self._refuse(size)
        return _Hold(self, size)

    def reserve(self, content_length: str | None, header_length: str | None, max_body_bytes: int) -> tuple[int, int]:
        """For a REST infer request: the body limit, checked against what the request declares, and the bytes now
        held, which the caller gives back (`budget.held -= reserved`) when the request ends, however it ends.

        The limit is the JSON limit for an all-JSON body; for a binary one (Triton's extension) the body limit, with
        its JSON header held to the JSON limit. What is held is the declared Content-Length, or the whole limit for
        a body of unknown length. One function, no helpers: it runs on every request."""
        json_limit = self.max_json_bytes
        if header_length is None:
            limit = max_body_bytes if max_body_bytes < json_limit else json_limit
        elif header_length.isdecimal() and int(header_length) > json_limit:
            raise JsonTooLarge(
                f"JSON header of {header_length} bytes exceeds the JSON limit of {json_limit} bytes (--max-json-mb)"
            )
        else:
            limit = max_body_bytes
        size = limit
        if content_length and content_length.isdecimal():
            declared = int(content_length)
            if header_length is None and json_limit < declared <= max_body_bytes:
                raise JsonTooLarge(
                    f"JSON request body of {declared} bytes exceeds the limit of {json_limit} bytes for JSON tensors "
                    f"(--max-json-mb); send large tensors as binary data (Triton's binary tensor extension, up to "
                    f"{max_body_bytes} bytes, --max-body-mb)"
                )
            if declared < limit:
                size = declared
        if self.held and self.held + size > self.max_bytes:
            self._refuse(size)
        self.held += size
        return limit, size

    def _refuse(self, size: int) -> None:
        raise DecodingFull(
            f"the server is decoding {self.held} bytes of request bodies (--max-decoding-mb allows "
            f"{self.max_bytes}); this one of {size} bytes must wait: retry later"
        )


class _Hold:
    """One request's reservation (a plain class, not a generator context manager: every request takes one)."""

    __slots__ = ("budget", "size")

    def __init__(self, budget: BodyBudget, size: int) -> None:
        self.budget, self.size = budget, size

    def __enter__(self) -> None:
        self.budget.held += self.size

    def __exit__(self, *exc: object) -> None:
        self.budget.held -= self.size
