"""What drift monitoring costs the server: DriftMonitor.observe per executed batch (in the batch worker thread,
once per batch) and DriftMonitor.report per scrape of /metrics, for each input kind.

    python benchmarks/drift.py

Compare with the server's CPU time per request in benchmarks/serve.py (about 350 µs for one digits sample over
JSON, average batch 8 at 16 connections).
"""

from __future__ import annotations

import time

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


def main() -> None:
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


if __name__ == "__main__":
    main()
