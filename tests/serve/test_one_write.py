"""One write per HTTP response (maasctl/serve/one_write.py): the head held until the body, and nothing lost or
reordered when no body follows. Unit tests on a recording transport, then real `maasctl serve` over raw sockets."""

from __future__ import annotations

import asyncio
import json
import socket

import numpy as np
from helpers import start_server, stop_server

from maasctl.serve.one_write import HeldHeadTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default


def test_a_head_and_its_body_go_out_in_one_write_and_other_calls_pass_through() -> None:
    async def main() -> None:
        recorder = Recorder()
        transport = HeldHeadTransport(recorder, asyncio.get_running_loop())
        transport.write(HEAD)
        assert recorder.writes == []
        transport.write(memoryview(b"{}"))
        assert recorder.writes == [HEAD + b"{}"]
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1)
        assert transport.is_closing() is False
        await asyncio.sleep(0)  # the flush scheduled with the head finds nothing left
        assert recorder.writes == [HEAD + b"{}"]
        transport.close()
        assert transport.is_closing() is True  # uvicorn asks after each response: the wrapped transport answers

    asyncio.run(main())


def test_a_head_with_no_body_after_it_goes_out_at_the_end_of_the_loops_step_and_before_a_close() -> None:
    async def main() -> None:
        recorder = Recorder()
        transport = HeldHeadTransport(recorder, asyncio.get_running_loop())
        transport.write(HEAD)  # a HEAD request's answer: no body write follows
        await asyncio.sleep(0)
        assert recorder.writes == [HEAD]
        transport.write(HEAD)
        transport.close()  # a response cut short: what was written still goes out first
        assert recorder.writes == [HEAD, HEAD] and recorder.closed
        await asyncio.sleep(0)
        assert recorder.writes == [HEAD, HEAD]

    asyncio.run(main())


def test_100_continue_is_not_held() -> None:
    async def main() -> None:
        recorder = Recorder()
        transport = HeldHeadTransport(recorder, asyncio.get_running_loop())
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # the client waits for it before sending the body
        assert recorder.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]

    asyncio.run(main())


def _request(sock: socket.socket, method: str, path: str, body: bytes = b"", extra: str = "") -> None:
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    sock.sendall(head.encode() + body)


def _response(sock: socket.socket, first: bytes = b"") -> tuple[bytes, bytes]:
    data = first
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def test_maasctl_serve_sends_each_answer_whole_and_answers_head_and_expect_100_continue(model_repo) -> None:
    server = start_server(model_repo)
    port = int(server.url.rsplit(":", 1)[1])
    doc = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]}
    body = json.dumps(doc).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for _ in range(20):  # keep-alive: each answer arrives in one piece (one write, one segment on loopback)
                _request(sock, "POST", "/v2/models/digits/infer", body, "Content-Type: application/json\r\n")
                first = sock.recv(65536)
                head, reply = _response(sock, first)
                assert head.startswith(b"HTTP/1.1 200") and first.endswith(reply), first
                assert np.array(json.loads(reply)["outputs"][0]["data"]).shape == (10,)
            _request(sock, "HEAD", "/v2/health/live")  # headers and no body: not held back
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            head = f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n"
            sock.sendall(head.encode() + b"Expect: 100-continue\r\nContent-Type: application/json\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")  # sent before the body is
            sock.sendall(body)
            head, reply = _response(sock)
            assert head.startswith(b"HTTP/1.1 200") and len(json.loads(reply)["outputs"][0]["data"]) == 10
    finally:
        code, log = stop_server(server)
    assert code == 0, log
