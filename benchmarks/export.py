"""CPU latency of the exported model: onnxruntime (fp32 and int8) against PyTorch eager, at batch 1 and 32.

    python benchmarks/export.py                   # trains its own tiny runs (digits CNN and digits MLP) in a temp folder
    python benchmarks/export.py --epochs 3 --repeats 50 --threads 1   # the README figures (1 thread: steadier on a shared CPU)

For each family: `maasctl train` + `maasctl export` (fp32) + `maasctl export --quantize int8`, then in this one
process, runs interleaved so machine noise hits all alike, the median latency of PyTorch eager (no_grad, eval),
onnxruntime fp32 and onnxruntime int8 on the same test batch. Reported as ratios: torch / ORT fp32 (how much
faster ORT is) and ORT fp32 / ORT int8 (the int8 speed-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _cli import cli

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {
    "digits CNN (cnn_small)": ROOT / "recipes" / "digits_cnn.yaml",
    "digits MLP": ROOT / "recipes" / "digits_mlp.yaml",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads for both (0: each library's default)")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from maasctl.data import build_dataset
    from maasctl.models import build_model_from_meta
    from maasctl.recipe import load_recipe
    from maasctl.train.checkpoint import load_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        for family, recipe_path in FAMILIES.items():
            name = recipe_path.stem.replace("_", "-")
            cli("train", str(recipe_path), "--name", name, "--set", f"train.epochs={args.epochs}", "--json", cwd=ws)
            cli("export", name, "--name", name + "-fp32", "--json", cwd=ws)
            q = json.loads(cli("export", name, "--name", name + "-int8", "--quantize", "int8", "--json", cwd=ws))[
                "compression"
            ]
            run_dir = ws / "artifacts" / "runs" / name
            recipe = load_recipe(run_dir / "recipe.yaml")
            ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
            model = build_model_from_meta(ckpt["meta"], weights_follow=True)
            model.load_state_dict(ckpt["model"])
            model.eval()
            x = build_dataset(recipe.data, recipe.train.seed).test.x
            options = ort.SessionOptions()
            if args.threads:
                options.intra_op_num_threads = args.threads
            sessions = {
                kind: ort.InferenceSession(
                    str(ws / "artifacts" / "models" / f"{name}-{kind}" / "1" / "model.onnx"),
                    options,
                    providers=["CPUExecutionProvider"],
                )
                for kind in ("fp32", "int8")
            }
            for b in (1, 32):
                batch = np.ascontiguousarray(x[:b])
                tb = torch.from_numpy(batch)
                fns = {  # called within this iteration only
                    "torch": lambda: model(tb),  # noqa: B023
                    "fp32": lambda: sessions["fp32"].run(["logits"], {"input": batch}),  # noqa: B023
                    "int8": lambda: sessions["int8"].run(["logits"], {"input": batch}),  # noqa: B023
                }
                times = {k: [] for k in fns}
                with torch.no_grad():
                    for fn in fns.values():
                        for _ in range(10):
                            fn()
                    for _ in range(args.repeats):
                        for k, fn in fns.items():
                            t = time.perf_counter()
                            fn()
                            times[k].append((time.perf_counter() - t) * 1000)
                med = {k: statistics.median(v) for k, v in times.items()}
                rows.append(
                    {
                        "family": family,
                        "mode": q["mode"],
                        "batch": b,
                        "torch_ms": med["torch"],
                        "ort_fp32_ms": med["fp32"],
                        "ort_int8_ms": med["int8"],
                        "ort_vs_torch": med["torch"] / med["fp32"],
                        "int8_speedup": med["fp32"] / med["int8"],
                        "fp32_accuracy": q["fp32"]["accuracy"],
                        "int8_accuracy": q["compressed"]["accuracy"],
                        "size_ratio": q["compressed"]["bytes"] / q["fp32"]["bytes"],
                    }
                )
    for r in rows:
        print(
            f"{r['family']:<22} int8 {r['mode']:<7} batch {r['batch']:>2}: torch {r['torch_ms']:.3f} ms, ORT fp32 {r['ort_fp32_ms']:.3f} ms "
            f"({r['ort_vs_torch']:.2f}x faster than torch), ORT int8 {r['ort_int8_ms']:.3f} ms ({r['int8_speedup']:.2f}x vs fp32); "
            f"accuracy {r['fp32_accuracy']:.2%} -> {r['int8_accuracy']:.2%}, size {r['size_ratio']:.2f}x"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
