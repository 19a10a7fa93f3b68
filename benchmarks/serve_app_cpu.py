"""CPU per infer request of the ASGI app alone, no sockets: maasctl's app vs the lean probe (benchmarks/lean_probe.py).

    python benchmarks/serve_app_cpu.py --repo artifacts/models --model digits-cnn --rounds 5

16 concurrent tasks call the app directly with the JSON v2 body of one digits sample (the same body as
serve.py), each waiting for its answer before sending the next, on uvloop, batching and onnxruntime included; no
uvicorn, no HTTP parsing, no kernel. The figure is process CPU time / requests, best round of --rounds for each
contender, contenders alternating. It leaves out what every server pays alike (HTTP, sockets), so it shows the
apps' own difference more plainly than a load test on a shared machine; the probe runs as is, with maasctl's
metrics (`+metrics`), with its validation (`+validate`), with both, and with every per-request feature of maasctl,
each its way (`+features`: see lean_probe.py).

    python benchmarks/serve_app_cpu.py --repo artifacts/models --opcodes

counts instead the Python opcodes the event-loop thread executes per request (8 tasks, so batches of about 8 as
under wrk -c16): a figure that does not depend on the machine's load, to tell small changes apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def body_of(sample: np.ndarray) -> bytes:
    data = [float(v) for v in sample.ravel()]
    return json.dumps({"inputs": [{"name": "input", "shape": list(sample.shape), "datatype": "FP32", "data": data}]})


def maasctl_app(repo: Path):
    from maasctl.repository import ModelRepository
    from maasctl.serve.dataplane import DataPlane
    from maasctl.serve.rest import create_app

    dataplane = DataPlane(ModelRepository(str(repo)))
    dataplane.load_all()
    return create_app(dataplane, drain_seconds=5)  # as `maasctl serve` makes it


def probe_app(onnx: Path, flags: list[str]):
    from lean_probe import Probe

    return Probe(str(onnx), metrics="metrics" in flags, validate="validate" in flags, features="features" in flags)


async def _client(app, path: str, body: bytes, requests: int) -> None:
    headers = [
        (b"host", b"bench"),
        (b"content-length", str(len(body)).encode()),
        (b"content-type", b"application/json"),
    ]
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "query_string": b"", "root_path": ""}
    scope.update(scheme="http", http_version="1.1", asgi={"version": "3.0"}, client=("127.0.0.1", 1))

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    for _ in range(requests):
        sent.clear()
        await app(dict(scope), receive, send)
        if sent[0]["status"] != 200:
            raise SystemExit(f"answer {sent[0]['status']}: {sent[1]['body'][:300]!r}")


@contextlib.asynccontextmanager
async def started(app, path: str, body: bytes, tasks: int):
    """The app's lifespan started (stopped after), and each of `tasks` clients warmed up with 100 requests."""
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, outbox.put)
    )
    await outbox.get()
    await asyncio.gather(*(_client(app, path, body, 100) for _ in range(tasks)))
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await lifespan


async def count_opcodes(app, path: str, body: bytes, requests: int) -> float:
    """Python opcodes executed on this (the event loop's) thread per request, 8 tasks, after a warm-up."""
    import threading

    loop_thread, counted = threading.get_ident(), [0]
    clients = {_client.__code__, count_opcodes.__code__}

    def trace(frame, event, arg):
        if (
            threading.get_ident() != loop_thread
            or frame.f_code in clients
            or frame.f_code.co_name in ("receive", "send")
        ):
            return None
        frame.f_trace_opcodes = True
        return step

    def step(frame, event, arg):
        if event == "opcode":
            counted[0] += 1
        return step

    async with started(app, path, body, 8):
        sys.settrace(trace)
        try:
            await asyncio.gather(*(_client(app, path, body, requests) for _ in range(8)))
        finally:
            sys.settrace(None)
    return counted[0] / (8 * requests)


async def measure(app, path: str, body: bytes, requests: int, rounds: int) -> list[float]:
    """CPU microseconds per request, one figure per round (after a warm-up)."""
    figures = []
    async with started(app, path, body, 16):
        for _ in range(rounds):
            start = time.process_time()
            await asyncio.gather(*(_client(app, path, body, requests) for _ in range(16)))
            figures.append((time.process_time() - start) / (16 * requests) * 1e6)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="model repository (maasctl quickstart makes one)")
    parser.add_argument("--model", default="digits-cnn")
    parser.add_argument("--requests", type=int, default=300, help="requests per task and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--contender", help=argparse.SUPPRESS)  # one contender, in a process of its own
    parser.add_argument("--opcodes", action="store_true", help="count Python opcodes per request instead of CPU")
    args = parser.parse_args()
    versions = sorted((p for p in (args.repo / args.model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    onnx, path = versions[-1] / "model.onnx", f"/v2/models/{args.model}/infer"
    body = body_of(np.random.default_rng(0).normal(0, 1, (1, 1, 8, 8)).astype(np.float32)).encode()
    if args.contender:
        import uvloop

        name, *flags = args.contender.split("+")
        app = maasctl_app(args.repo) if name == "maasctl" else probe_app(onnx, flags)
        if args.opcodes:
            print(json.dumps([uvloop.run(count_opcodes(app, path, body, 200))]))
            return
        print(json.dumps(uvloop.run(measure(app, path, body, args.requests, args.rounds))))
        return
    _compare(args)


def _compare(args: argparse.Namespace) -> None:
    import subprocess

    names = ["maasctl", "probe", "probe+metrics", "probe+validate", "probe+metrics+validate", "probe+features"]
    best: dict[str, list[float]] = {n: [] for n in names}
    if args.opcodes:
        names.remove("probe+metrics+validate")
    for _ in range(1 if args.opcodes else 2):  # each contender twice, alternating, each time in a fresh process
        for name in names:
            cmd = [sys.executable, __file__, "--repo", str(args.repo), "--model", args.model, "--contender", name]
            cmd += ["--requests", str(args.requests), "--rounds", str(args.rounds)] + ["--opcodes"] * args.opcodes
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
            best[name].append(min(json.loads(out)))
    if args.opcodes:
        print("Python opcodes per request on the event loop's thread, the app alone, 8 tasks:")
        for name in names:
            print(f"   {name:<24} {best[name][0]:7.0f}")
        return
    print(f"CPU per request of the app alone (best round of {args.rounds}, best of 2 processes), 16 tasks:")
    for name in names:
        print(f"   {name:<24} {min(best[name]):6.1f} us   (processes: {', '.join(f'{v:.1f}' for v in best[name])})")


if __name__ == "__main__":
    main()
