"""What drift monitoring costs a served request, end to end: the same model served twice, with its manifest's drift
statistics (monitoring on) and without them (off: the manifest as exported before drift monitoring), measured
alternately under the load of benchmarks/serve.py's section 1 (16 keep-alive connections, one digits sample per JSON
v2 request). Reports requests/s and the server's CPU time per request, medians of --repeats runs each.

    python benchmarks/serve_drift.py                        # makes its own model: maasctl quickstart --epochs 2
    python benchmarks/serve_drift.py --repo artifacts/models --model digits-cnn --repeats 7
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from serve import Server, _make_model, free_port, load, make_bodies, platform_line  # benchmarks/serve.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, help="a model repository (default: make one with quickstart)")
    parser.add_argument("--model", default="digits-cnn")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    maasctl = shutil.which("maasctl") or sys.exit("maasctl is not installed: pip install -e '.[train]'")
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        tmp = Path(tmp)
        try:
            repo = (args.repo or _make_model(maasctl, tmp)).resolve()
            plain = tmp / "plain"
            shutil.copytree(repo / args.model, plain / args.model)
            for manifest in (plain / args.model).glob("*/model.json"):
                doc = json.loads(manifest.read_text())
                if "drift" not in doc:
                    sys.exit(f"{manifest}: no drift statistics; export the model with this maasctl")
                del doc["drift"]
                manifest.write_text(json.dumps(doc))
            for name, where in (("drift on", repo), ("drift off", plain)):
                port = free_port()
                cmd = [maasctl, "serve", "--repo", str(where), "--port", str(port)]
                servers.append(Server(name, cmd, port, tmp / f"{name}.log", tmp))
            body, headers = make_bodies(args.model, np.zeros((1, 1, 8, 8), np.float32))["json"]
            path = f"/v2/models/{args.model}/infer"
            runs: dict[str, list[dict]] = {s.name: [] for s in servers}
            for _ in range(args.repeats):
                for s in servers:
                    runs[s.name].append(
                        load(s, path, body, headers, args.concurrency, args.duration, 200_000, args.warmup)
                    )
        finally:
            for s in servers:
                s.stop()
    print(f"{platform_line()}; {args.concurrency} connections, medians of {args.repeats} alternating runs")
    for name, rs in runs.items():
        rps = statistics.median(r["rps"] for r in rs)
        # The CPU reading spans the warm-up too: count its requests at the measured rate, as serve.py does.
        cpu = statistics.median(r["server_cpu_s"] / (r["ok"] * (1 + args.warmup / args.duration)) for r in rs) * 1e6
        print(f"{name:10} {rps:8.0f} requests/s   server CPU {cpu:6.0f} µs/request")
    # Adjacent runs share the machine's mood best: the ratio within each pair, then its quartiles.
    on, off = runs["drift on"], runs["drift off"]
    for key, what in (("rps", "requests/s"), ("server_cpu_s", "server CPU per request")):
        ratios = [
            (a[key] / a["ok"]) / (b[key] / b["ok"]) if key == "server_cpu_s" else a[key] / b[key]
            for a, b in zip(on, off)
        ]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        print(f"on / off, {what}: median {statistics.median(ratios):.3f} (quartiles {q[0]:.3f}, {q[2]:.3f})")


if __name__ == "__main__":
    main()
