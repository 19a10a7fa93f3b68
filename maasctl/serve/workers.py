"""`maasctl serve --workers N`: N server processes on one port, for the cores one Python process cannot use.

- **One port**: each worker binds its own listening socket with SO_REUSEPORT (Linux), and the kernel spreads new
  connections across them (a keep-alive connection stays with its worker). gRPC binds the same way.
- **Own models**: each worker loads its own onnxruntime sessions and batchers (a worker sees about 1/N of the
  traffic, so its batches are smaller), with 1/N of the cores for onnxruntime's threads. On a GPU, each worker
  holds its own CUDA session: N times the model's GPU memory.
- **Metrics**: prometheus-client's multiprocess mode; each worker writes its samples to files in a folder the
  supervisor makes, and `/metrics` on any worker sums them all (queue gauges summed over live workers).
- **Load and unload** reach every worker: the worker that takes the request applies it, then writes it to a
  control folder that every worker watches (every 0.2 s) and applies too. Polling (`--poll-seconds`) runs in
  each worker against the same repository.
- **Supervisor**: the first process starts the workers (spawned, so none inherits another's threads), forwards
  SIGTERM to them (each drains as one server does) and exits 0 once all did. A worker that exits on its own
  (a model failed to load at start-up, a crash) stops the others, and the supervisor exits with its code.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import orjson

from maasctl.errors import EXIT_UNAVAILABLE, MaasctlError
from maasctl.serve.dataplane import DataPlane

log = logging.getLogger("maasctl.serve")

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
THREADS_ENV = "MAASCTL_INTRA_OP_THREADS"  # read by maasctl.runtime.session.load_model
FOLLOW_SECONDS = 0.2


def default_workers(device: str) -> int:
    """1 on a GPU (each worker would hold its own CUDA session) or on up to 3 cores (the event loop and
    onnxruntime already share them: measured on 2 cores, 2 workers did no better); else one per 4 cores."""
    from maasctl.runtime.session import CUDA, select_providers

    cores = os.cpu_count() or 1
    if CUDA in select_providers(device) or cores < 4:
        return 1
    return cores // 4


class Worker:
    """What one worker shares with the others: the control folder for load and unload."""

    def __init__(self, shared: str) -> None:
        self.control = Path(shared) / "control"
        self.seen = set(os.listdir(self.control))

    def bind(self, host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        return sock

    def publish(self, op: str, name: str) -> None:
        entry = f"{time.time_ns():020d}-{os.getpid()}-{op}.json"
        self.seen.add(entry)
        staged = self.control / f".{entry}"
        staged.write_bytes(orjson.dumps({"op": op, "name": name}))
        staged.rename(self.control / entry)  # whole or not at all, for the workers reading the folder

    async def follow(self, dataplane: DataPlane) -> None:
        """Apply the loads and unloads other workers took, in the order they were taken."""
        while True:
            await asyncio.sleep(FOLLOW_SECONDS)
            for entry in sorted(e for e in os.listdir(self.control) if not e.startswith(".") and e not in self.seen):
                self.seen.add(entry)
                event = orjson.loads((self.control / entry).read_bytes())
                try:
                    if event["op"] == "load":
                        await DataPlane.load_model(dataplane, event["name"])
                    else:
                        await DataPlane.unload_model(dataplane, event["name"])
                    log.info("applied %s of %s, taken by another worker", event["op"], event["name"])
                except Exception as exc:  # the worker that took it has answered; this one reports and goes on
                    log.warning("%s of %s, taken by another worker, failed here: %s", event["op"], event["name"], exc)


class WorkerDataPlane(DataPlane):
    """A dataplane whose loads and unloads are passed on to the other workers."""

    def __init__(self, *args: Any, worker: Worker, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.worker = worker

    async def load_model(self, name: str) -> list[int]:
        try:
            return await super().load_model(name)
        finally:
            self.worker.publish("load", name)

    async def unload_model(self, name: str) -> None:
        try:
            await super().unload_model(name)
        finally:
            self.worker.publish("unload", name)


def serve_workers(workers: int, **options: Any) -> None:
    """Start `workers` server processes with `options` (those of server.serve) and supervise them."""
    with tempfile.TemporaryDirectory(prefix="maasctl-workers-") as shared:
        (Path(shared) / "metrics").mkdir()
        (Path(shared) / "control").mkdir()
        os.environ[METRICS_ENV] = str(Path(shared) / "metrics")  # the spawned workers import prometheus with it
        os.environ.setdefault(THREADS_ENV, str(max(1, (os.cpu_count() or 1) // workers)))
        context = multiprocessing.get_context("spawn")
        procs = [
            context.Process(target=_worker_main, args=(shared, options), name=f"maasctl-worker-{i}", daemon=False)
            for i in range(workers)
        ]
        for proc in procs:
            proc.start()
        code = _supervise(procs)
    if code:
        sys.exit(code)


def _supervise(procs: list[multiprocessing.Process]) -> int:
    from prometheus_client import multiprocess

    stopping = False

    def stop(signum: int = signal.SIGTERM, frame: Any = None) -> None:
        nonlocal stopping
        # Ctrl-C reaches every process of the terminal's group, the workers included: forward only SIGTERM
        if not stopping and signum == signal.SIGTERM:
            for proc in procs:
                if proc.is_alive() and proc.pid:
                    os.kill(proc.pid, signal.SIGTERM)
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code, alive = 0, list(procs)
    while alive:
        for sentinel in wait([p.sentinel for p in alive]):
            proc = next(p for p in alive if p.sentinel == sentinel)
            proc.join()
            alive.remove(proc)
            multiprocess.mark_process_dead(proc.pid)
            exit_code = proc.exitcode if proc.exitcode is not None else 1
            if exit_code and not code:
                code = exit_code if exit_code > 0 else EXIT_UNAVAILABLE  # killed by a signal
            if not stopping and alive:
                log.error("worker %s exited with code %s: stopping the others", proc.pid, proc.exitcode)
                stop()
    return code


def _worker_main(shared: str, options: dict[str, Any]) -> None:
    from maasctl.serve.server import serve

    try:
        serve(**options, worker=Worker(shared))
    except MaasctlError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
