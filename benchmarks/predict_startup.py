"""How close `maasctl predict` comes to a bare onnxruntime script: start-up, and throughput on 1,000 images.

    python benchmarks/predict_startup.py                      # makes its own model: maasctl quickstart --epochs 2
    python benchmarks/predict_startup.py --repo artifacts/models --model digits-cnn --repeats 9

Start-up: the wall time of a single-image `maasctl predict MODEL IMAGE --json` (a subprocess, as a CI step
runs it) against the floor measured in the same run: `python -c` that imports numpy and onnxruntime, creates
the session for the same model and runs it once. Target: at most 1.5x the floor.

Throughput: predicting a folder of 1,000 PNG images against the same work written by hand in-process
(Pillow decode, the manifest's normalisation, onnxruntime at the same batch size). Both run as subprocesses;
throughput is images per second of the time beyond each side's own single-image run (so start-up cancels
out), reported as maasctl / hand-written. Target: at least 0.8.

Every figure is the median of --repeats runs; the runs of the contenders are interleaved so that machine
noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOR = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
s.run(None, {s.get_inputs()[0].name: np.zeros((1, 1, 8, 8), np.float32)})
"""

# The hand-written equivalent of `maasctl predict MODEL FOLDER`: decode, normalise, run in batches, label.
BY_HAND = """
import json, os, sys
import numpy as np, onnxruntime as ort
from PIL import Image
model_dir, folder, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
manifest = json.load(open(os.path.join(model_dir, "model.json")))
pre = manifest["preprocessing"]
mean, std = np.float32(pre["mean"][0]), np.float32(pre["std"][0])
s = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), providers=["CPUExecutionProvider"])
name = s.get_inputs()[0].name
files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
labels = []
for i in range(0, len(files), batch_size):
    x = np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.float32) for f in files[i:i + batch_size]])
    x = ((x * np.float32(pre["scale"]) - mean) / std)[:, None]
    labels += [manifest["labels"][k] for k in s.run(None, {name: x})[0].argmax(1)]
print(len(labels))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, help="model repository (default: make one with maasctl quickstart --epochs 2)")
    parser.add_argument("--model", default="digits-cnn", help="model name in --repo")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    maasctl = shutil.which("maasctl", path=os.path.dirname(sys.executable)) or shutil.which("maasctl")
    if maasctl is None:
        sys.exit("maasctl is not installed in this environment: pip install -e .")
    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        tmp = Path(tmp)
        repo = args.repo or _make_model(maasctl, tmp)
        model_dir = _latest_version(repo / args.model)
        one, folder = _write_images(tmp, args.images)
        predict = [maasctl, "predict", args.model, "--repo", str(repo), "--json", "--batch-size", str(args.batch_size)]
        direct = [sys.executable, "-m", "maasctl.predict", *predict[2:]]
        floor = [sys.executable, "-c", FLOOR, str(model_dir / "model.onnx")]
        by_hand = [sys.executable, "-c", BY_HAND, str(model_dir), str(folder), str(args.batch_size)]

        _check(predict + [str(folder)], args.images)
        runs = {
            "floor": floor,
            "maasctl predict, 1 image": predict + [str(one)],
            "python -m maasctl.predict, 1 image": direct + [str(one)],
            "by hand, 1 image": by_hand[:-2] + [str(one.parent), str(args.batch_size)],
            f"maasctl predict, {args.images} images": predict + [str(folder)],
            f"by hand, {args.images} images": by_hand,
        }
        times = _interleaved(runs, args.repeats)

    t = {k: statistics.median(v) for k, v in times.items()}
    n = args.images
    floor_t = t["floor"]
    ours_marginal = t[f"maasctl predict, {n} images"] - t["maasctl predict, 1 image"]
    hand_marginal = t[f"by hand, {n} images"] - t["by hand, 1 image"]
    print(f"\nmedians of {args.repeats} runs, {platform_line()}")
    for name, value in t.items():
        print(f"  {name:<38} {value * 1000:8.0f} ms")
    print("\nstart-up (single image, vs bare onnxruntime import + session + one run; target <= 1.5x)")
    print(f"  maasctl predict             {t['maasctl predict, 1 image'] / floor_t:5.2f}x   ({t['maasctl predict, 1 image'] * 1000:.0f} ms vs {floor_t * 1000:.0f} ms)")
    print(f"  python -m maasctl.predict   {t['python -m maasctl.predict, 1 image'] / floor_t:5.2f}x   ({t['python -m maasctl.predict, 1 image'] * 1000:.0f} ms)")
    print(f"\nthroughput ({n} PNG images, batch {args.batch_size}, beyond each side's 1-image run; target >= 0.8)")
    print(f"  maasctl predict {n / ours_marginal:8.0f} images/s ({ours_marginal * 1000:.0f} ms)")
    print(f"  by hand         {n / hand_marginal:8.0f} images/s ({hand_marginal * 1000:.0f} ms)")
    print(f"  ratio           {hand_marginal / ours_marginal:8.2f}")
    print(f"  end to end      {t[f'maasctl predict, {n} images'] * 1000:.0f} ms vs {t[f'by hand, {n} images'] * 1000:.0f} ms "
          f"(ratio {t[f'by hand, {n} images'] / t[f'maasctl predict, {n} images']:.2f})")


def _make_model(maasctl: str, tmp: Path) -> Path:
    print("making a model: maasctl quickstart --epochs 2 ...", file=sys.stderr)
    subprocess.run([maasctl, "quickstart", "--epochs", "2", "--samples", "1"], cwd=tmp, check=True, capture_output=True)
    return tmp / "artifacts" / "models"


def _latest_version(folder: Path) -> Path:
    versions = sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        sys.exit(f"{folder}: no model versions")
    return versions[-1]


def _write_images(tmp: Path, count: int) -> tuple[Path, Path]:
    from PIL import Image

    from maasctl.data import build_dataset
    from maasctl.recipe import load_recipe

    raw = build_dataset(load_recipe().data, seed=0).test.raw
    folder, single = tmp / "images", tmp / "single"
    folder.mkdir()
    single.mkdir()
    for i in range(count):
        Image.fromarray(raw[i % len(raw)]).save(folder / f"{i:05d}.png")
    shutil.copy(folder / "00000.png", single / "00000.png")
    return single / "00000.png", folder


def _check(cmd: list[str], count: int) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert len(json.loads(out)["predictions"]) == count, "maasctl predict did not label every image"


def _interleaved(runs: dict[str, list[str]], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in runs}
    for cmd in runs.values():  # warm the file cache once
        subprocess.run(cmd, capture_output=True, check=True)
    for _ in range(repeats):
        for name, cmd in runs.items():
            start = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            times[name].append(time.perf_counter() - start)
    return times


def platform_line() -> str:
    import platform

    return f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"


if __name__ == "__main__":
    main()
