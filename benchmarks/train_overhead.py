"""How close `maasctl train` comes to a minimal hand-written PyTorch loop, and (on a GPU) what its speed features buy.

    python benchmarks/train_overhead.py                       # digits CNN, 10 epochs, 5 alternations
    python benchmarks/train_overhead.py --epochs 20 --repeats 7 --threads 1

Overhead (every machine): training throughput, samples/s over full epochs, of `Trainer(recipe).fit(run_dir)` (the
default digits CNN recipe with more epochs, on a temporary run folder: per-epoch validation, both checkpoints,
metrics.csv, all included, though the last epoch's checkpoint is still being written in the background when its
epoch is reported; the closing test evaluation and pictures are not part of an epoch and are left out)
against the same work written by hand in the same process: the same model (same seed), data (as tensors on the
device), batch size and AdamW settings, with a per-epoch validation accuracy, no checkpoints and no schedule.
The two alternate (A B, B A, ...) so that machine noise hits both alike; the figure is the median of the per-pair
ratios maasctl / hand-written. Target: at least 0.95. On CUDA both run plain fp32 here (amp and channels_last off)
so that only the trainer's own overhead is compared.

Speed features (only where torch.cuda.is_available()): a ResNet-18 on CIFAR-sized synthetic data (3x32x32, 10
classes), batch 256: a plain fp32 hand-written loop (PyTorch defaults) against maasctl with train.amp/channels_last
on auto (bf16 or fp16, NHWC) and with train.compile too. Steady-state samples/s, epochs 2..N (the first epoch holds
cuDNN autotuning and compilation). Target: at least 2x the plain loop.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maasctl.recipe import load_recipe
from maasctl.train.rundir import create_run_dir
from maasctl.train.trainer import Trainer


def run_maasctl(overrides: list[str]) -> tuple[float, list[float], int]:
    """Start time, the time each epoch ended, and training samples per epoch, for one `Trainer.fit`."""
    trainer = Trainer(load_recipe(None, overrides))
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = create_run_dir(Path(tmp), "bench")
        _sync(trainer.device)
        started = time.perf_counter()
        trainer.fit(run_dir, on_epoch=lambda row, total: stamps.append(time.perf_counter()))
    return started, stamps, len(trainer.data.train.y)


def run_by_hand(overrides: list[str], plain: bool = False) -> tuple[float, list[float], int]:
    """The same work in the fewest lines: model, data and hyperparameters from the same recipe and seed.
    plain: PyTorch's defaults (no cuDNN autotuning, which Trainer turns on with CUDA)."""
    recipe = load_recipe(None, overrides)
    setup = Trainer(recipe)  # only for the identical seeded model and data; its loop is not used
    if plain:
        torch.backends.cudnn.benchmark = False
    model, device, cfg = setup.model, setup.device, recipe.train
    x, y = torch.from_numpy(setup.data.train.x).to(device), torch.from_numpy(setup.data.train.y).to(device)
    xv, yv = torch.from_numpy(setup.data.validation.x).to(device), torch.from_numpy(setup.data.validation.y).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    stamps: list[float] = []
    _sync(device)
    started = time.perf_counter()
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(y), generator=shuffle).to(device)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum(
                int((model(xv[i : i + 512]).argmax(1) == yv[i : i + 512]).sum()) for i in range(0, len(yv), 512)
            )
        _ = correct / len(yv)  # what a hand-written loop reports per epoch
        stamps.append(time.perf_counter())
    return started, stamps, len(y)


def throughput(result: tuple[float, list[float], int], skip_first: bool = False) -> float:
    started, stamps, n = result
    if skip_first:
        return n * (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return n * len(stamps) / (stamps[-1] - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    base = [f"train.epochs={args.epochs}"]
    if torch.cuda.is_available():
        base += ["train.amp=off", "train.channels_last=off"]
    # Warm-up, not counted: first-call costs (allocator, oneDNN primitives, lazy imports) hit whichever runs first.
    run_maasctl(["train.epochs=1"])
    run_by_hand(["train.epochs=1"])
    ours, hand, ratios = [], [], []
    for r in range(args.repeats):
        pair = {}
        for who in ("maasctl", "hand") if r % 2 == 0 else ("hand", "maasctl"):
            pair[who] = throughput(run_maasctl(base) if who == "maasctl" else run_by_hand(base))
        ours.append(pair["maasctl"])
        hand.append(pair["hand"])
        ratios.append(pair["maasctl"] / pair["hand"])
        print(
            f"  pair {r + 1}: maasctl {pair['maasctl']:,.0f} samples/s, by hand {pair['hand']:,.0f} samples/s, ratio {ratios[-1]:.3f}"
        )
    return {
        "maasctl": statistics.median(ours),
        "hand": statistics.median(hand),
        "ratio": statistics.median(ratios),
        "low": min(ratios),
        "high": max(ratios),
    }


def speed_features(args: argparse.Namespace, tmp: Path) -> None:
    """GPU only: maasctl's AMP / channels_last / compile against a plain fp32 hand-written loop on a ResNet-18."""
    rng = np.random.default_rng(0)
    n = args.resnet_samples
    np.savez(tmp / "synthetic.npz", x=rng.standard_normal((n, 3, 32, 32), dtype=np.float32), y=rng.integers(0, 10, n))
    base = [
        f"data={{source: npz, path: {tmp / 'synthetic.npz'}, split: {{train: 0.8, validation: 0.1, test: 0.1}}}}",
        "model.name=resnet18",
        "train.batch_size=256",
        f"train.epochs={args.resnet_epochs}",
        "train.device=cuda",
    ]
    plain = base + ["train.amp=off", "train.channels_last=off"]
    variants = {
        "maasctl fp32 (amp off, channels_last off)": plain,
        "maasctl amp + channels_last (auto)": base,
        "maasctl amp + channels_last + compile": base + ["train.compile=true"],
    }
    results: dict[str, list[float]] = {"plain fp32 loop by hand": [], **{k: [] for k in variants}}
    for _ in range(args.speed_repeats):
        results["plain fp32 loop by hand"].append(throughput(run_by_hand(plain, plain=True), skip_first=True))
        for name, overrides in variants.items():
            results[name].append(throughput(run_maasctl(overrides), skip_first=True))
            torch._dynamo.reset()  # each compiled run starts from scratch
    floor = statistics.median(results["plain fp32 loop by hand"])
    print(
        f"\nspeed features on {torch.cuda.get_device_name()} (ResNet-18, 3x32x32, batch 256, steady state, median of {args.speed_repeats}):"
    )
    for name, values in results.items():
        sps = statistics.median(values)
        print(f"  {name:45s} {sps:10,.0f} samples/s   {sps / floor:5.2f}x the plain loop")
    print("  target: amp + channels_last + compile at least 2x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run of the digits CNN (default 10)")
    parser.add_argument("--repeats", type=int, default=5, help="maasctl/by-hand pairs (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--resnet-samples", type=int, default=16384, help="GPU part: synthetic images (default 16384)")
    parser.add_argument("--resnet-epochs", type=int, default=4, help="GPU part: epochs per run (default 4)")
    parser.add_argument("--speed-repeats", type=int, default=2, help="GPU part: runs of each variant (default 2)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"training overhead: digits CNN, {args.epochs} epochs per run, {args.repeats} alternating pairs, {device}, "
        f"{torch.get_num_threads()} CPU thread(s), torch {torch.__version__}"
    )
    o = overhead(args)
    print(
        f"\nmaasctl {o['maasctl']:,.0f} samples/s, by hand {o['hand']:,.0f} samples/s (medians): "
        f"ratio {o['ratio']:.3f} (median of per-pair ratios, range {o['low']:.3f}-{o['high']:.3f}; target >= 0.95)"
    )
    if torch.cuda.is_available():
        with tempfile.TemporaryDirectory() as tmp:
            speed_features(args, Path(tmp))
    else:
        print("no CUDA device: the AMP / channels_last / compile comparison runs only on a GPU")


if __name__ == "__main__":
    main()
