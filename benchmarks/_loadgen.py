"""A closed-loop HTTP/1.1 keep-alive load generator (asyncio streams), run as its own process by serve.py.

    python benchmarks/_loadgen.py < spec.json     # prints one JSON object: counts, elapsed, latency percentiles

spec: {"host", "port", "path", "headers": {..}, "body_b64", "concurrency", "duration_s", "max_requests",
"warmup_s"}. Each of `concurrency` connections sends the same POST, waits for the whole response, and sends the
next; the run stops at `duration_s` or `max_requests` (whichever first). Requests finishing during the first
`warmup_s` are not counted. Non-200 answers are counted as errors (and never as successes).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time


async def _connection(spec: dict, request: bytes, state: dict, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection(spec["host"], spec["port"])
    try:
        while True:
            now = time.perf_counter()
            if now >= state["stop_at"] or state["sent"] >= state["max_requests"]:
                return
            state["sent"] += 1
            start = now
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
                    break
            else:
                raise RuntimeError("response without Content-Length: " + head.decode(errors="replace"))
            body = await reader.readexactly(length)
            end = time.perf_counter()
            if end < state["count_from"]:
                continue
            if status == 200:
                latencies.append(end - start)
                state["bytes_in"] += length
            else:
                state["errors"] += 1
                state.setdefault("first_error", f"{status} {body[:200].decode(errors='replace')}")
    finally:
        writer.close()


async def run(spec: dict) -> dict:
    body = base64.b64decode(spec["body_b64"])
    headers = {
        "Host": f"{spec['host']}:{spec['port']}",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        **spec.get("headers", {}),
    }
    request = (
        f"POST {spec['path']} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    ).encode() + body
    return await drive(spec, request, _connection)


async def drive(spec: dict, request: bytes, connection) -> dict:
    """`spec["concurrency"]` connections sending `request` for the duration after the warm-up, each made by
    `connection(spec, request, state, latencies)`; the counts and latency quantiles of the measured part."""
    t0 = time.perf_counter()
    state = {
        "sent": 0,
        "errors": 0,
        "bytes_in": 0,
        "max_requests": spec["max_requests"],
        "count_from": t0 + spec.get("warmup_s", 0.0),
        "stop_at": t0 + spec.get("warmup_s", 0.0) + spec["duration_s"],
    }
    latencies: list[float] = []
    tasks = [asyncio.create_task(connection(spec, request, state, latencies)) for _ in range(spec["concurrency"])]
    # Hard bound: the duration plus a grace period for the last responses.
    done, pending = await asyncio.wait(tasks, timeout=spec.get("warmup_s", 0.0) + spec["duration_s"] + 30)
    for t in pending:
        t.cancel()
    failures = [repr(t.exception()) for t in done if t.exception() is not None]
    elapsed = time.perf_counter() - state["count_from"]
    latencies.sort()

    def pct(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None

    return {
        "ok": len(latencies),
        "errors": state["errors"],
        "first_error": state.get("first_error"),
        "connection_failures": failures[:3],
        "elapsed_s": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_s": pct(0.5),
        "p90_s": pct(0.9),
        "p99_s": pct(0.99),
        "mean_s": sum(latencies) / len(latencies) if latencies else None,
    }


def main() -> None:
    spec = json.load(sys.stdin)
    try:
        import uvloop  # the client's own overhead matters on 2 cores; uvloop is cheaper when installed
    except ImportError:
        print(json.dumps(asyncio.run(run(spec))))
    else:
        print(json.dumps(uvloop.run(run(spec))))


if __name__ == "__main__":
    main()
