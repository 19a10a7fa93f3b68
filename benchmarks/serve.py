"""How `maasctl serve` compares with a hand-written app and with in-process onnxruntime, over loopback HTTP.

    python benchmarks/serve.py                     # makes its own model: maasctl quickstart --epochs 2
    python benchmarks/serve.py --repo artifacts/models --duration 4 --repeats 3

The server runs as a `maasctl serve` subprocess on a free loopback port; load comes from benchmarks/_loadgen.py,
a closed-loop asyncio (uvloop when installed) HTTP/1.1 keep-alive client in its own process, so it does not share
the server's event loop (it does share the machine's cores). Every request carries one digits sample
(1x1x8x8 FP32). Sections:

0. wrk -t1 -c16 (a C load generator, far cheaper per request than the Python one: a system package,
   `apt-get install -y wrk`; the section says so and is skipped when it is missing), JSON v2 bodies: maasctl serve
   (defaults: validation, batching, metrics on) vs benchmarks/lean_probe.py (a raw ASGI callable, one batching task,
   no validation or metrics: the reference) vs the FastAPI app, rounds alternating, ratios per round; plus the
   median latency at 1 connection (wrk -c1). Targets: >= 0.9x the probe, median within 0.2 ms of its.
   `--wrk-only` runs only this; `--probe-variants` adds the probe with maasctl's metrics, validation, both, and
   every per-request feature of maasctl as maasctl implements it (`--features`), and that with maasctl's hand-off
   to onnxruntime's thread (`--model-thread`): the leanest structure known with maasctl's features, the limit.
1. throughput at 16 connections, JSON v2 bodies: maasctl serve (defaults: dynamic batching up to 32 rows, no
   queue delay) vs benchmarks/_baseline_app.py: a hand-written FastAPI app running one onnxruntime call per
   request (the issue's yardstick; `pip install -e '.[bench]'`, skipped when FastAPI is missing), and the same
   in bare Starlette + orjson (stricter; "the baseline" in the other sections). Target: >= 4x FastAPI.
   Also the server's CPU time per request (from /proc), less sensitive to noise than requests/s.
2. latency at 1 connection: median of maasctl serve vs one in-process onnxruntime run of one sample (same
   session options). Target: within 1 ms. The baseline app, and maasctl with --max-queue-delay-ms 0 (now the default), for context.
3. sweep over concurrency: throughput, p50, p99 for maasctl and the baseline, and maasctl's average batch size
   from /metrics (delta of nv_inference_count_total / nv_inference_exec_count_total over the step).
4. binary tensors (Triton's binary_tensor_data extension, binary output too) vs JSON at 16 connections.
5. gRPC (`--grpc-port`, the tensor in raw_input_contents as tritonclient.grpc sends it; benchmarks/_grpc_loadgen.py,
   one grpc.aio channel per connection) vs REST binary tensors, both against one server, at 16 connections.
6. `--workers 2` vs one worker, JSON at 16 connections.

Contenders are measured alternately (--repeats times) and the median reported, so machine noise hits both.
Every load run is bounded by --duration seconds and --max-requests requests.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import _wrk
import numpy as np

HERE = Path(__file__).resolve().parent
SWEEP = [1, 2, 4, 8, 16, 32, 64]


class Server:
    """A server subprocess on a free loopback port, ready when /v2/health/ready says 200."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, cwd: Path) -> None:
        self.name, self.port, self.log = name, port, log
        self._log_file = open(log, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, cwd=cwd)
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited with {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{name} not ready in 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return r.read()

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read(), dict(r.headers)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(
    server: Server,
    path: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    duration: float,
    max_requests: int,
    warmup: float,
    grpc: dict | None = None,
) -> dict:
    """One load run. `grpc`: {"port", "model", "input", "shape"} to send ModelInfer over gRPC instead, with
    `body` the raw tensor."""
    spec = {
        "host": "127.0.0.1",
        "port": server.port,
        "path": path,
        "headers": headers,
        "body_b64": base64.b64encode(body).decode(),
        "concurrency": concurrency,
        "duration_s": duration,
        "max_requests": max_requests,
        "warmup_s": warmup,
    }
    if grpc is not None:
        spec.update(grpc, raw_b64=spec["body_b64"])
    cpu0 = server.cpu_seconds()
    out = subprocess.run(
        [sys.executable, str(HERE / ("_grpc_loadgen.py" if grpc else "_loadgen.py"))],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=duration + warmup + 60,
    )
    if out.returncode != 0:
        raise SystemExit(f"load generator failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout)
    result["server_cpu_s"] = server.cpu_seconds() - cpu0  # includes the warm-up's requests
    if result["errors"] or result["connection_failures"] or not result["ok"]:
        raise SystemExit(f"{server.name}: errors under load: {result}")
    return result


METRIC = re.compile(
    r'^(nv_inference_count_total|nv_inference_exec_count_total)\{[^}]*model="([^"]+)"[^}]*\} ([0-9.e+]+)$', re.M
)


def counters(server: Server, model: str) -> tuple[float, float]:
    found = {name: float(v) for name, m, v in METRIC.findall(server.get("/metrics").decode()) if m == model}
    return found.get("nv_inference_count_total", 0.0), found.get("nv_inference_exec_count_total", 0.0)


def make_bodies(model: str, sample: np.ndarray) -> dict[str, tuple[bytes, dict[str, str]]]:
    shape = list(sample.shape)
    json_body = json.dumps(
        {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": [float(v) for v in sample.ravel()]}]}
    ).encode()
    raw = sample.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return {
        "json": (json_body, {"Content-Type": "application/json"}),
        "binary": (
            header + raw,
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
        ),
    }


def check_answers(server: Server, path: str, bodies: dict, expected: np.ndarray, binary: bool) -> None:
    """Every contender must return the in-process logits before its speed counts."""
    body, headers = bodies["json"]
    reply = json.loads(server.post(path, body, headers)[0])
    got = np.asarray(reply["outputs"][0]["data"], np.float32).reshape(expected.shape)
    assert np.allclose(got, expected, atol=1e-5), f"{server.name}: JSON answer differs: {got} vs {expected}"
    if binary:
        body, headers = bodies["binary"]
        content, reply_headers = server.post(path, body, headers)
        n = int({k.lower(): v for k, v in reply_headers.items()}["inference-header-content-length"])
        got = np.frombuffer(content[n:], "<f4").reshape(expected.shape)
        assert np.allclose(got, expected, atol=1e-5), f"{server.name}: binary answer differs"


def in_process_latency(onnx_path: Path, sample: np.ndarray, seconds: float, max_runs: int) -> tuple[float, np.ndarray]:
    """Median wall time of one onnxruntime run of one sample, session made as maasctl makes it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: sample}
    expected = session.run(None, feeds)[0]
    for _ in range(50):
        session.run(None, feeds)
    times, stop = [], time.perf_counter() + seconds
    while len(times) < max_runs and time.perf_counter() < stop:
        t = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t)
    return statistics.median(times), expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repo", type=Path, help="model repository (default: make one with maasctl quickstart --epochs 2)"
    )
    parser.add_argument("--model", default="digits-cnn")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measured load run (sections 1, 2, 4)")
    parser.add_argument("--sweep-duration", type=float, default=1.5, help="seconds per load run in the sweep")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of load before each run starts counting")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per contender in sections 1, 2, 4")
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap on requests per load run")
    parser.add_argument("--sweep", default=",".join(map(str, SWEEP)), help="concurrencies for section 3")
    parser.add_argument(
        "--sweep-repeats", type=int, default=3, help="alternating runs per contender and point in section 3"
    )
    parser.add_argument("--no-binary", action="store_true", help="skip section 4")
    parser.add_argument("--no-grpc", action="store_true", help="skip section 5 (gRPC vs REST binary)")
    parser.add_argument("--no-workers", action="store_true", help="skip section 6 (--workers 2 vs 1)")
    parser.add_argument(
        "--only-new", action="store_true", help="run sections 5 and 6 only (the gRPC and --workers comparisons)"
    )
    parser.add_argument("--no-wrk", action="store_true", help="skip section 0 (wrk: maasctl vs the lean probe)")
    parser.add_argument("--wrk-only", action="store_true", help="run section 0 only")
    parser.add_argument(
        "--probe-variants",
        action="store_true",
        help="section 0 also measures the probe with maasctl's metrics, its validation, both, and all its features",
    )
    args = parser.parse_args()

    maasctl = shutil.which("maasctl", path=os.path.dirname(sys.executable)) or shutil.which("maasctl")
    if maasctl is None:
        sys.exit("maasctl is not installed in this environment: pip install -e '.[train]'")
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        tmp = Path(tmp)
        try:
            run(args, maasctl, tmp, servers)
        finally:
            for s in servers:
                s.stop()


def run(args: argparse.Namespace, maasctl: str, tmp: Path, servers: list[Server]) -> None:
    repo = (args.repo or _make_model(maasctl, tmp)).resolve()
    versions = sorted((p for p in (repo / args.model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    onnx_path = versions[-1] / "model.onnx"
    sample = np.random.default_rng(0).normal(0, 1, (1, 1, 8, 8)).astype(np.float32)
    bodies = make_bodies(args.model, sample)
    path = f"/v2/models/{args.model}/infer"
    floor, expected = in_process_latency(onnx_path, sample, 2.0, 20_000)

    def start_maasctl(name: str, *extra: str) -> Server:
        port = free_port()
        extra = extra if "--workers" in extra else ("--workers", "1", *extra)  # one process unless said otherwise
        s = Server(
            name, [maasctl, "serve", "--repo", str(repo), "--port", str(port), *extra], port, tmp / f"{name}.log", tmp
        )
        servers.append(s)
        check_answers(s, path, bodies, expected, binary=True)
        return s

    ours = start_maasctl("maasctl")

    def start_baseline(kind: str) -> Server:
        port = free_port()
        s = Server(
            kind,
            [sys.executable, str(HERE / "_baseline_app.py"), str(onnx_path), str(port), kind],
            port,
            tmp / f"{kind}.log",
            tmp,
        )
        servers.append(s)
        check_answers(s, path, bodies, expected, binary=False)
        return s

    fastapi = start_baseline("fastapi") if not args.only_new and importlib.util.find_spec("fastapi") else None
    if not args.only_new and not args.no_wrk:
        probe_section(args, tmp, ours, fastapi, onnx_path, path, bodies, expected, servers)
        if args.wrk_only:
            return
    if not args.only_new:
        base = start_baseline("starlette")
        no_delay = start_maasctl("maasctl-delay0", "--max-queue-delay-ms", "0")

    grpc_port = free_port()
    grpc_spec = {"port": grpc_port, "model": args.model, "input": "input", "shape": list(sample.shape)}
    bodies["grpc"] = (sample.astype("<f4").tobytes(), {})

    def measure(server: Server, kind: str, concurrency: int, duration: float) -> dict:
        body, headers = bodies[kind]
        c0 = counters(server, args.model) if server.name.startswith("maasctl") else None
        extra = {"grpc": grpc_spec} if kind == "grpc" else {}
        r = load(server, path, body, headers, concurrency, duration, args.max_requests, args.warmup, **extra)
        if c0 is not None:
            c1 = counters(server, args.model)
            r["avg_batch"] = (c1[0] - c0[0]) / max(c1[1] - c0[1], 1)
        return r

    def alternate(
        contenders: dict[str, tuple[Server, str]],
        concurrency: int,
        repeats: int | None = None,
        duration: float | None = None,
    ) -> dict[str, list[dict]]:
        runs: dict[str, list[dict]] = {k: [] for k in contenders}
        for _ in range(repeats or args.repeats):
            for name, (server, kind) in contenders.items():
                runs[name].append(measure(server, kind, concurrency, duration or args.duration))
        return runs

    med = lambda rs, key: statistics.median(r[key] for r in rs)  # noqa: E731
    print(
        f"\n{platform_line()}; model {args.model} ({onnx_path}); one 1x1x8x8 FP32 sample per request; "
        f"{args.duration:g} s per run after {args.warmup:g} s warm-up, medians of {args.repeats} alternating runs"
    )

    def grpc_and_workers() -> None:
        # 5. gRPC vs REST binary, one server
        if not args.no_grpc:
            both = start_maasctl("maasctl-grpc", "--grpc-port", str(grpc_port))
            r5 = alternate({"rest": (both, "binary"), "grpc": (both, "grpc")}, 16)
            print("\n5. maasctl serve --grpc-port, 16 connections: gRPC (raw_input_contents) vs REST binary tensors")
            for name, label in (("rest", "REST binary"), ("grpc", "gRPC")):
                cpu = statistics.median(
                    r["server_cpu_s"] / (r["ok"] * (1 + args.warmup / args.duration)) for r in r5[name]
                )
                print(
                    f"   {label:<12} {med(r5[name], 'rps'):8.0f} req/s  p50 {med(r5[name], 'p50_s') * 1e3:6.2f} ms  "
                    f"p99 {med(r5[name], 'p99_s') * 1e3:6.2f} ms  avg batch {med(r5[name], 'avg_batch'):5.1f}  "
                    f"server CPU ~{cpu * 1e6:4.0f} us/req"
                )
            print(f"   gRPC / REST binary: {med(r5['grpc'], 'rps') / med(r5['rest'], 'rps'):.2f}x")
            print("   single runs: " + ", ".join(f"{k} {[round(r['rps']) for r in v]}" for k, v in r5.items()))

        # 6. --workers 2 vs one worker
        if not args.no_workers:
            two = start_maasctl("maasctl-workers2", "--workers", "2")
            r6 = alternate({"1": (ours, "json"), "2": (two, "json")}, 16)
            print("\n6. maasctl serve --workers 2 vs 1 worker, 16 connections, JSON bodies")
            for name in ("1", "2"):
                print(
                    f"   {name} worker(s)  {med(r6[name], 'rps'):8.0f} req/s  p50 {med(r6[name], 'p50_s') * 1e3:6.2f} ms  "
                    f"p99 {med(r6[name], 'p99_s') * 1e3:6.2f} ms  avg batch {med(r6[name], 'avg_batch'):5.1f}"
                )
            print(f"   2 workers / 1: {med(r6['2'], 'rps') / med(r6['1'], 'rps'):.2f}x")
            print("   single runs: " + ", ".join(f"{k} {[round(r['rps']) for r in v]}" for k, v in r6.items()))

    if args.only_new:
        grpc_and_workers()
        return

    # 1. throughput at 16 connections
    contenders = {"maasctl": (ours, "json"), "baseline": (base, "json")}
    if fastapi is not None:
        contenders["fastapi"] = (fastapi, "json")
    r1 = alternate(contenders, 16)
    ours_rps, base_rps = med(r1["maasctl"], "rps"), med(r1["baseline"], "rps")
    cpu = {
        k: statistics.median(r["server_cpu_s"] / (r["ok"] * (1 + args.warmup / args.duration)) for r in v) * 1e6
        for k, v in r1.items()
    }
    print("\n1. throughput, 16 connections, JSON bodies (target: maasctl >= 4x the FastAPI app)")
    print(
        f"   maasctl serve       {ours_rps:8.0f} req/s  p50 {med(r1['maasctl'], 'p50_s') * 1e3:6.2f} ms  p99 {med(r1['maasctl'], 'p99_s') * 1e3:6.2f} ms"
        f"  avg batch {med(r1['maasctl'], 'avg_batch'):5.1f}  server CPU ~{cpu['maasctl']:4.0f} us/req"
    )
    for name, label in (("fastapi", "FastAPI app"), ("baseline", "Starlette app")):
        if name in r1:
            rps = med(r1[name], "rps")
            print(
                f"   {label:<19} {rps:8.0f} req/s  p50 {med(r1[name], 'p50_s') * 1e3:6.2f} ms  p99 {med(r1[name], 'p99_s') * 1e3:6.2f} ms"
                f"  (one ort run per request)  server CPU ~{cpu[name]:4.0f} us/req   maasctl / this: {ours_rps / rps:.2f}x"
            )
    if fastapi is None:
        print("   FastAPI app         skipped: FastAPI is not installed (pip install -e '.[bench]')")
    print("   single runs: " + ", ".join(f"{k} {[round(r['rps']) for r in v]}" for k, v in r1.items()))

    # 2. latency at 1 connection
    r2 = alternate({"maasctl": (ours, "json"), "maasctl-delay0": (no_delay, "json"), "baseline": (base, "json")}, 1)
    print("\n2. latency, 1 connection, JSON (target: maasctl median within 1 ms of in-process onnxruntime)")
    print(f"   in-process onnxruntime, 1 sample      median {floor * 1e3:6.3f} ms")
    for name, label in (
        ("maasctl", "maasctl serve (defaults)"),
        ("maasctl-delay0", "maasctl serve --max-queue-delay-ms 0"),
        ("baseline", "baseline app"),
    ):
        p50 = med(r2[name], "p50_s")
        print(
            f"   {label:<37} median {p50 * 1e3:6.3f} ms  (+{(p50 - floor) * 1e3:.3f} ms, {p50 / floor:5.1f}x)  "
            f"p99 {med(r2[name], 'p99_s') * 1e3:6.3f} ms  {med(r2[name], 'rps'):6.0f} req/s"
        )

    # 3. sweep
    print(
        f"\n3. concurrency sweep, JSON, medians of {args.sweep_repeats} alternating runs of {args.sweep_duration:g} s per point "
        f"(batch = delta nv_inference_count_total / delta nv_inference_exec_count_total from /metrics)"
    )
    print(
        f"   {'conc':>4} | {'maasctl req/s':>13} {'p50 ms':>7} {'p99 ms':>7} {'batch':>5} | {'baseline req/s':>14} {'p50 ms':>7} {'p99 ms':>7} | {'ratio':>5}"
    )
    for c in [int(x) for x in args.sweep.split(",")]:
        rs = alternate({"o": (ours, "json"), "b": (base, "json")}, c, args.sweep_repeats, args.sweep_duration)
        o = {k: med(rs["o"], k) for k in ("rps", "p50_s", "p99_s", "avg_batch")}
        b = {k: med(rs["b"], k) for k in ("rps", "p50_s", "p99_s")}
        print(
            f"   {c:>4} | {o['rps']:13.0f} {o['p50_s'] * 1e3:7.2f} {o['p99_s'] * 1e3:7.2f} {o['avg_batch']:5.1f} | "
            f"{b['rps']:14.0f} {b['p50_s'] * 1e3:7.2f} {b['p99_s'] * 1e3:7.2f} | {o['rps'] / b['rps']:5.2f}x"
        )

    # 4. binary tensors
    if not args.no_binary:
        r4 = alternate({"json": (ours, "json"), "binary": (ours, "binary")}, 16)
        j, bn = med(r4["json"], "rps"), med(r4["binary"], "rps")
        print("\n4. maasctl serve, 16 connections: binary tensors (input and output) vs JSON")
        print(
            f"   JSON     {j:8.0f} req/s  p50 {med(r4['json'], 'p50_s') * 1e3:6.2f} ms  body {len(bodies['json'][0])} B"
        )
        print(
            f"   binary   {bn:8.0f} req/s  p50 {med(r4['binary'], 'p50_s') * 1e3:6.2f} ms  body {len(bodies['binary'][0])} B"
        )
        print(f"   ratio    {bn / j:8.2f}x   vs the baseline app's JSON: {bn / base_rps:.2f}x")

    grpc_and_workers()
    print(f"\nload average after the run: {os.getloadavg()[0]:.1f}")


def probe_section(
    args,
    tmp: Path,
    ours: Server,
    fastapi: Server | None,
    onnx_path: Path,
    path: str,
    bodies: dict,
    expected: np.ndarray,
    servers: list[Server],
) -> None:
    """Section 0: maasctl serve (defaults) vs the lean probe (benchmarks/lean_probe.py) vs the FastAPI app, with
    wrk -t1 -c16 for throughput and -c1 for the median latency; rounds alternate, the contender that opens a
    round rotates, and ratios are taken within each round (the machine is shared: absolute figures swing)."""
    if not _wrk.available():
        print(f"\n0. skipped: {_wrk.MISSING}")
        if args.wrk_only:
            raise SystemExit(_wrk.MISSING)
        return
    contenders = {"maasctl": ours}
    variants = [("probe", [])]
    if args.probe_variants:
        variants += [
            ("probe+metrics", ["--metrics"]),
            ("probe+validate", ["--validate"]),
            ("probe+both", ["--metrics", "--validate"]),
            ("probe+features", ["--features"]),  # every per-request feature of maasctl, its way
            ("probe+features+thread", ["--features", "--model-thread"]),  # and maasctl's hand-off: the limit
        ]
    for name, flags in variants:
        port = free_port()
        cmd = [sys.executable, str(HERE / "lean_probe.py"), str(onnx_path), str(port), *flags]
        contenders[name] = s = Server(name, cmd, port, tmp / f"{name}.log", tmp)
        servers.append(s)
        check_answers(s, path, bodies, expected, binary=False)
    if fastapi is not None:
        contenders["fastapi"] = fastapi
    body, headers = bodies["json"]
    lua = _wrk.script(tmp, body, headers)
    seconds = max(1, round(args.duration))
    runs = wrk_rounds(contenders, path, lua, args.repeats, seconds, one_connection=True)
    _print_probe_section(args, runs, seconds)


def wrk_rounds(
    servers: dict[str, Server], path: str, lua: Path, rounds: int, seconds: int, one_connection: bool = False
) -> dict[str, list[dict]]:
    """`wrk -t1 -c16` on each server once a round, the opening one rotating, after a warm-up: each run's wrk figures
    and the server's CPU per request (`cpu_us`); with `one_connection`, also the median latency at `-c1`
    (`p50_1conn_s`). Errors under load end the benchmark."""
    names = list(servers)
    for server in servers.values():  # warm-up
        _wrk.run(f"http://127.0.0.1:{server.port}{path}", lua, 16, 1)
    runs: dict[str, list[dict]] = {k: [] for k in names}
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            server = servers[name]
            url = f"http://127.0.0.1:{server.port}{path}"
            cpu0 = server.cpu_seconds()
            r = _wrk.run(url, lua, 16, seconds)
            r["cpu_us"] = (server.cpu_seconds() - cpu0) / max(r["requests"], 1) * 1e6
            if one_connection:
                r["p50_1conn_s"] = _wrk.run(url, lua, 1, max(1, seconds // 2))["p50_s"]
            if r["non_2xx"] or r["socket_errors"]:
                raise SystemExit(f"{name}: errors under load: {r}")
            runs[name].append(r)
    return runs


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def _print_probe_section(args, runs: dict[str, list[dict]], seconds: int) -> None:
    labels = {"maasctl": "maasctl serve", "probe": "lean probe", "fastapi": "FastAPI app"}
    print(
        f"\n0. wrk -t1 -c16 ({seconds} s runs), JSON v2 bodies, {args.repeats} alternating rounds; 1-connection "
        "median from wrk -c1 (targets: maasctl >= 0.9x the lean probe, 1-connection median within 0.2 ms of it)"
    )
    print(f"   {'server':<22} {'req/s q1 / median / q3':>26}  {'CPU us/req':>10}  {'1-conn p50 ms q1 / med / q3':>28}")
    for name, rs in runs.items():
        q = quartiles([r["rps"] for r in rs])
        lat = quartiles([r["p50_1conn_s"] * 1e3 for r in rs])
        cpu = statistics.median(r["cpu_us"] for r in rs)
        print(
            f"   {labels.get(name, name):<22} {q[0]:8.0f} / {q[1]:6.0f} / {q[2]:6.0f}  {cpu:10.0f}  "
            f"{lat[0]:8.3f} / {lat[1]:6.3f} / {lat[2]:6.3f}"
        )
    for other in [k for k in runs if k != "maasctl"]:
        ratios = [a["rps"] / b["rps"] for a, b in zip(runs["maasctl"], runs[other])]
        q = quartiles(ratios)
        print(
            f"   maasctl / {labels.get(other, other):<22} {q[1]:5.2f}x (per-round quartiles {q[0]:.2f} / {q[2]:.2f}; "
            f"rounds {[round(x, 2) for x in ratios]})"
        )
    for variant in [k for k in runs if k.startswith("probe+")]:  # what the features cost the probe
        q = quartiles([a["rps"] / b["rps"] for a, b in zip(runs[variant], runs["probe"])])
        print(f"   {variant:<22} / lean probe {q[1]:5.2f}x (per-round quartiles {q[0]:.2f} / {q[2]:.2f})")
    if "probe" in runs:
        gaps = [(a["p50_1conn_s"] - b["p50_1conn_s"]) * 1e3 for a, b in zip(runs["maasctl"], runs["probe"])]
        q = quartiles(gaps)
        print(f"   1-conn median, maasctl - probe: {q[1]:+.3f} ms (per-round quartiles {q[0]:+.3f} / {q[2]:+.3f})")
    print("   single runs req/s: " + ", ".join(f"{k} {[round(r['rps']) for r in v]}" for k, v in runs.items()))
    print(f"   load average after section 0: {os.getloadavg()[0]:.1f}")


def _make_model(maasctl: str, tmp: Path) -> Path:
    print("making a model: maasctl quickstart --epochs 2 ...", file=sys.stderr)
    subprocess.run(
        [maasctl, "quickstart", "--epochs", "2", "--samples", "1"],
        cwd=tmp,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return tmp / "artifacts" / "models"


def platform_line() -> str:
    import platform

    return f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"


if __name__ == "__main__":
    main()
