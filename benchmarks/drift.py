"""What drift monitoring costs the server: DriftMonitor.observe per executed batch (in the batch worker thread,
once per batch) and DriftMonitor.report per scrape of /metrics, for each input kind; and with --repo, the
dataplane's CPU time per request (decode, batch, onnxruntime, encode; no HTTP) with and without the model's drift
statistics, alternating, which a loaded machine disturbs less than an HTTP load test (benchmarks/serve_drift.py).

    python benchmarks/drift.py
    python benchmarks/drift.py --repo artifacts/models --model digits-cnn

Compare with the server's CPU time per request in benchmarks/serve.py (about 350 µs for one digits sample over
JSON, average batch 8 at 16 connections).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from maasctl.drift import DriftMonitor, reference_statistics

rng = np.random.default_rng(0)


def per_call_us(fn, repeats: int) -> float:
    fn()
    best = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best.append((time.perf_counter() - start) / repeats * 1e6)
    return min(best)


def observe_costs() -> None:
    kinds = {
        "image 1x8x8 (digits)": ("image", lambda n: rng.normal(size=(n, 1, 8, 8)).astype(np.float32)),
        "image 3x224x224": ("image", lambda n: rng.normal(size=(n, 3, 224, 224)).astype(np.float32)),
        "features 100": ("features", lambda n: rng.normal(size=(n, 100)).astype(np.float32)),
        "tokens 256": ("tokens", lambda n: rng.integers(0, 5000, size=(n, 256))),
    }
    print(f"{'input':24} {'batch':>5} {'observe µs/batch':>17} {'µs/sample':>10} {'report µs (full window)':>24}")
    for label, (kind, make) in kinds.items():
        reference = make(2000 if "224" not in label else 200)
        stats = reference_statistics(kind, reference, {}, rng.integers(0, 10, 500), 10, reference_split="train")
        for batch in (1, 8, 32):
            monitor = DriftMonitor("m", 1, stats)
            inputs, outputs = {"input": make(batch)}, {"logits": rng.normal(size=(batch, 10)).astype(np.float32)}
            observe = per_call_us(lambda m=monitor, i=inputs, o=outputs: m.observe(i, o), 200)
            report = per_call_us(monitor.report, 20)
            print(f"{label:24} {batch:5d} {observe:17.1f} {observe / batch:10.1f} {report:24.0f}")


def dataplane_cpu_per_request(repo: Path, model: str, requests: int) -> float:
    from maasctl.repository import ModelRepository
    from maasctl.serve.batching import BatchingConfig
    from maasctl.serve.dataplane import DataPlane

    plane = DataPlane(ModelRepository(repo), "cpu", BatchingConfig())
    plane.load_all()
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]}
    ).encode()

    async def run() -> float:
        await asyncio.gather(*(plane.infer(model, None, body, None) for _ in range(50)))  # warm up
        start = time.process_time()
        for _ in range(requests // 16):  # 16 at a time, as 16 connections would queue them
            await asyncio.gather(*(plane.infer(model, None, body, None) for _ in range(16)))
        spent = time.process_time() - start
        await plane.close()
        return spent / requests * 1e6

    return asyncio.run(run())


def dataplane_costs(repo: Path, model: str, rounds: int, requests: int) -> None:
    with tempfile.TemporaryDirectory(prefix="drift-off-") as tmp:
        plain = Path(tmp)
        shutil.copytree(repo / model, plain / model)
        for manifest in (plain / model).glob("*/model.json"):
            doc = json.loads(manifest.read_text())
            doc.pop("drift", None)
            manifest.write_text(json.dumps(doc))
        on, off = [], []
        for _ in range(rounds):
            on.append(dataplane_cpu_per_request(repo, model, requests))
            off.append(dataplane_cpu_per_request(plain, model, requests))
    ratios = [a / b for a, b in zip(on, off)]
    print(
        f"dataplane CPU per request, {requests} requests x {rounds} alternating rounds: drift on "
        f"{statistics.median(on):.0f} µs, off {statistics.median(off):.0f} µs; on/off median {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, help="a model repository whose --model has drift statistics")
    parser.add_argument("--model", default="digits-cnn")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    observe_costs()
    if args.repo:
        dataplane_costs(args.repo, args.model, args.rounds, args.requests)


if __name__ == "__main__":
    main()
