"""A compute-bound model behind `maasctl serve` against the same model run in-process with onnxruntime.

    python benchmarks/serve_heavy.py                           # resnet18, 3x224x224, random weights
    python benchmarks/serve_heavy.py --size 160 --duration 8 --repeats 3

The model is torchvision's resnet18 (10 classes, random weights: speed does not depend on them), exported to
ONNX with a dynamic batch axis and filed as a maasctl model version. Two contenders, measured alternately
(--repeats times, medians reported):

- in-process onnxruntime: images/s of `session.run` on batches of each size in --batches, session made as
  maasctl makes it; the best batch size is the baseline.
- maasctl serve (its defaults: dynamic batching up to 32 rows, no queue delay) under 16 closed-loop
  connections (benchmarks/_loadgen.py, its own process), each request one image as binary tensor data
  (Triton's binary_tensor_data extension, binary output too: what tritonclient and perf_analyzer send).

Target: maasctl serve >= 95% of the best in-process throughput. The server's average batch size comes from
/metrics. Also printed: each round's served figure over the same round's best-batch figure (median, quartiles).
`--device cuda` runs both on the CUDA execution provider (onnxruntime-gpu needed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from serve import Server, counters, free_port, load, make_bodies, platform_line, quartiles  # noqa: E402

MODEL = "resnet18"


def file_resnet18(repo: Path, size: int) -> Path:
    """Export resnet18 and file it as `repo/resnet18/1` with a maasctl manifest; returns the ONNX path."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    folder = repo / MODEL / "1"
    folder.mkdir(parents=True)
    onnx_path = folder / "model.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, size, size),),
        str(onnx_path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    manifest = {
        "format": "maasctl.model/1",
        "task": "classification",
        "input_kind": "image",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, size, size]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
        "labels": [str(i) for i in range(10)],
        "preprocessing": {},
        "onnx": {"file": "model.onnx", "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest()},
    }
    (folder / "model.json").write_text(json.dumps(manifest))
    return onnx_path


def in_process(onnx_path: Path, size: int, batch: int, seconds: float, device: str) -> float:
    """Images per second of back-to-back `session.run` calls on `batch` images."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
    x = np.random.default_rng(0).normal(0, 1, (batch, 3, size, size)).astype(np.float32)
    for _ in range(2):
        session.run(None, {"input": x})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"input": x})
        runs += 1
    return runs * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="image height and width")
    parser.add_argument("--batches", default="1,4,8,16,32", help="in-process batch sizes to try")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before a served run counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    maasctl = shutil.which("maasctl", path=os.path.dirname(sys.executable)) or shutil.which("maasctl")
    if maasctl is None:
        sys.exit("maasctl is not installed in this environment: pip install -e '.[train]'")

    with tempfile.TemporaryDirectory(prefix="serve-heavy-") as tmp:
        tmp = Path(tmp)
        onnx_path = file_resnet18(tmp / "repo", args.size)
        port = free_port()
        server = Server(
            "maasctl",
            # one process, as the in-process figure it is compared with (the default depends on the cores)
            [
                maasctl,
                "serve",
                "--repo",
                str(tmp / "repo"),
                "--port",
                str(port),
                "--device",
                args.device,
                "--workers",
                "1",
            ],
            port,
            tmp / "serve.log",
            tmp,
        )
        try:
            run(args, server, onnx_path)
        finally:
            server.stop()


def run(args: argparse.Namespace, server: Server, onnx_path: Path) -> None:
    body, headers = make_bodies(MODEL, np.zeros((1, 3, args.size, args.size), np.float32))["binary"]
    batches = [int(b) for b in args.batches.split(",")]
    local: dict[int, list[float]] = {b: [] for b in batches}
    served, avg_batch = [], []
    for _ in range(args.repeats):
        for b in batches:
            local[b].append(in_process(onnx_path, args.size, b, args.duration, args.device))
        c0 = counters(server, MODEL)
        r = load(
            server, f"/v2/models/{MODEL}/infer", body, headers, args.concurrency, args.duration, 1_000_000, args.warmup
        )
        c1 = counters(server, MODEL)
        served.append(r["rps"])
        avg_batch.append((c1[0] - c0[0]) / max(c1[1] - c0[1], 1))
    medians = {b: statistics.median(v) for b, v in local.items()}
    best = max(medians, key=medians.get)
    ours = statistics.median(served)
    print(
        f"\n{platform_line()}; {MODEL} 3x{args.size}x{args.size} FP32 on {args.device}; {args.duration:g} s per run, "
        f"medians of {args.repeats} alternating runs"
    )
    print("\nin-process onnxruntime, images/s by batch size")
    for b in batches:
        mark = "  <- best" if b == best else ""
        print(f"   batch {b:>3}   {medians[b]:8.1f}{mark}")
    print(f"\nmaasctl serve, {args.concurrency} connections, one image per request, binary tensors")
    print(
        f"   {ours:8.1f} images/s   avg batch {statistics.median(avg_batch):4.1f}   (single runs: {[round(x, 1) for x in served]})"
    )
    print(f"\nratio to the best in-process batch size: {ours / medians[best]:.3f}   (target >= 0.95)")
    # Each round's served figure over the same round's in-process one: the pair ran back to back, so a host that
    # speeds up or slows down during the run moves both (single runs swing more than the target's margin).
    q1, q2, q3 = quartiles([s / b for s, b in zip(served, local[best])])
    print(f"per-round ratio: median {q2:.3f}, q1-q3 {q1:.3f}-{q3:.3f}")
    print(f"load average after the run: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
