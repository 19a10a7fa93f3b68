"""`maasctl serve` from several checkouts of this repository beside the lean probe, under `wrk -t1 -c16`, rounds
alternating: what a change does to the serving hot path, measured against its own baseline in the same run.

    git worktree add /tmp/before <commit>
    python benchmarks/serve_ab.py --repo artifacts/models --tree before=/tmp/before --tree after=. --rounds 11

Each tree's server is this environment's `maasctl serve` with the tree first on PYTHONPATH (one worker), the probe
is benchmarks/lean_probe.py on the same model's latest version; each round gives every contender one 3 s wrk run,
the opening contender rotating. Printed: requests/s and server CPU per request (medians), and each contender's
throughput over the probe's, per round (median and quartiles). One digits sample per JSON v2 request, as in
section 0 of serve.py; wrk is a system package (`apt-get install -y wrk`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _wrk  # noqa: E402
from serve import Server, free_port, quartiles, wrk_rounds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="model repository (maasctl quickstart makes one)")
    parser.add_argument("--model", default="digits-cnn")
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of a checkout to serve (repeatable)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    args = parser.parse_args()
    if not _wrk.available():
        raise SystemExit(_wrk.MISSING)
    versions = sorted((p for p in (args.repo / args.model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    maasctl = shutil.which("maasctl", path=os.path.dirname(sys.executable)) or "maasctl"
    data = [float(v) for v in np.random.default_rng(0).normal(0, 1, 64)]
    body = f'{{"inputs":[{{"name":"input","shape":[1,1,8,8],"datatype":"FP32","data":{data}}}]}}'.encode()
    path = f"/v2/models/{args.model}/infer"
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        lua = _wrk.script(tmp, body, {"Content-Type": "application/json"})
        port = free_port()
        probe = [sys.executable, str(HERE / "lean_probe.py"), str(versions[-1] / "model.onnx"), str(port)]
        servers = {"probe": Server("probe", probe, port, tmp / "probe.log", tmp)}
        try:
            for name, tree in (t.split("=", 1) for t in args.tree):
                port = free_port()
                source = Path(tree).resolve()  # first on the path: its maasctl, not the installed one
                cmd = ["env", f"PYTHONPATH={source}", maasctl, "serve", "--repo", str(args.repo.resolve())]
                cmd += ["--port", str(port), "--workers", "1"]
                servers[name] = Server(name, cmd, port, tmp / f"{name}.log", tmp)
            runs = wrk_rounds(servers, path, lua, args.rounds, args.duration)
        finally:
            for server in servers.values():
                server.stop()
    _report(runs, args)


def _report(runs: dict[str, list[dict]], args: argparse.Namespace) -> None:
    print(f"wrk -t1 -c16, {args.rounds} alternating rounds of {args.duration} s, load average {os.getloadavg()[0]:.1f}")
    for name, results in runs.items():
        q1, q2, q3 = quartiles([r["rps"] / p["rps"] for r, p in zip(results, runs["probe"])])
        rps = statistics.median(r["rps"] for r in results)
        cpu = statistics.median(r["cpu_us"] for r in results)
        print(
            f"   {name:<12} {rps:8.0f} req/s  {cpu:6.1f} us/req  / probe: {q2:.3f} (per-round q1 {q1:.3f}, q3 {q3:.3f})"
        )


if __name__ == "__main__":
    main()
