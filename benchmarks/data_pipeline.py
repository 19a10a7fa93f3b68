"""Streaming image data: memory that does not grow with the dataset, speed against a hand-written torchvision loop,
and fine-tuning from a related run.

    python benchmarks/data_pipeline.py memory --sizes 2000 20000      # peak memory of `maasctl train`, process + workers
    python benchmarks/data_pipeline.py speed --images 2000            # loader and training-epoch images/s vs torchvision
    python benchmarks/data_pipeline.py cache --images 2000            # loader images/s per epoch, data.cache none/ram/disk
    python benchmarks/data_pipeline.py finetune                        # pretrained (run:A) vs scratch on dataset B

memory: N generated 256x256 JPEGs in 10 class folders, `maasctl train` (--model, default mobilenet_v3_small; image_size
224, one epoch, train.data_workers 2) in a subprocess; the peak of the summed PSS (proportional set size: shared pages counted
once across the processes) of the process and its DataLoader workers, sampled every 0.1 s from /proc. Target: the
peak at 20,000 images at most 1.2x the peak at 2,000. --max-batches N bounds each training epoch to N batches
(train.max_batches_per_epoch; validation and test stay whole), so the 20,000-image run finishes on a slow machine.
--link M: the sizes above M are hard links to M generated JPEGs (each listed, split, read and decoded as a file of
its own). --loader-only: the same measure for maasctl's data pipeline alone (StreamFeed over every split, 2
workers, batches of 64, no model).

speed: the same folder, the same workers (2), batch size (64), transforms (resize the shorter side to 224, centre
crop 224, uint8, normalised after the copy) and model (--model, AdamW lr 3e-3, constant), in one process, alternating:
  loader   - images/s of maasctl's StreamFeed over the training split against torchvision.datasets.ImageFolder +
             DataLoader (same files);
  training - images/s of one training epoch (maasctl: Trainer.fit's data wait + compute seconds from metrics.csv;
             hand-written: the loop over the ImageFolder loader, forward, backward, step).
Target: at least 0.95x.

cache: the training loader (random-resized-crop [0.08, 1] + flip, 2 workers, batches of 64) over the training
split of --images JPEGs, images/s per epoch without a cache, with data.cache ram and with data.cache disk (a fresh
one), the three taking their epochs in turn; epoch 1 decodes and fills the cache, later epochs read it. Then the
CPU time per image of the workers' work (decode or cache read, crop, flip, to tensor) over 400 images, in this
process on one thread as in a worker, the least of 3 passes: unlike images/s, it hardly moves with other load.

finetune: dataset A (6 shape classes, 80 images each, 32x32) trains timm/test_resnet for --a-epochs; dataset B (4 of
those shapes in other colours, 15 images each) trains from scratch and from run:A (its best checkpoint; the head is
re-initialised for B's 4 classes), same seed and recipe otherwise; the validation accuracy per epoch of both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORKERS, BATCH, SIZE = 2, 64, 224


# --- data ------------------------------------------------------------------------------------------------------


def _jpegs(args: tuple[str, int, int]) -> None:
    from PIL import Image

    folder, start, count = args
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        cls = i % 10
        base = np.full((256, 256, 3), (cls * 25, 255 - cls * 25, (cls * 70) % 256), np.uint8)
        noise = rng.integers(0, 60, (256, 256, 3), dtype=np.uint8)
        path = Path(folder) / f"c{cls}" / f"{i}.jpg"
        Image.fromarray(base + noise).save(path, quality=90)


def make_folder(root: Path, n: int, link_from: Path | None = None) -> Path:
    """n 256x256 JPEGs in 10 class folders (made once; reused when present). With `link_from`, a folder made before:
    the n files are hard links to its files, in turn (each is listed, split, read and decoded as a file of its own)."""
    from concurrent.futures import ProcessPoolExecutor

    folder = root / f"jpegs{n}" if link_from is None else root / f"links{n}"
    if (folder / ".done").exists():
        return folder
    for c in range(10):
        (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
    if link_from is not None:
        sources = sorted(link_from.rglob("*.jpg"))
        for i in range(n):
            src = sources[i % len(sources)]
            os.link(src, folder / src.parent.name / f"{i}.jpg")
        (folder / ".done").touch()
        return folder
    chunk = 500
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_jpegs, [(str(folder), s, min(chunk, n - s)) for s in range(0, n, chunk)]))
    (folder / ".done").touch()
    return folder


# --- memory ----------------------------------------------------------------------------------------------------


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def peak_memory(cmd: list[str], cwd: Path) -> tuple[float, float, int]:
    """(peak summed PSS in GiB, seconds, exit code) of `cmd` and every process under it."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, started = 0, time.perf_counter()
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, sum(_pss_kib(p) for p in _tree(proc.pid)))
        time.sleep(0.1)
    reader.join()
    if proc.returncode:
        print("".join(stderr[-20:]), file=sys.stderr)
    return peak / 2**20, time.perf_counter() - started, proc.returncode


LOADER_ONLY = """
import sys, torch
from maasctl.data import build_dataset
from maasctl.recipe import load_recipe
from maasctl.train.streaming import StreamFeed
recipe = load_recipe(None, ["data.source=image_folder", "data.root=" + sys.argv[1], "data.image_size=[224,224]"])
data = build_dataset(recipe.data, 0)
for split in (data.train, data.validation, data.test):
    feed = StreamFeed(split, torch.device("cpu"), workers=int(sys.argv[2]), persistent=False)
    for x, y in feed.batches(int(sys.argv[3]), torch.randperm(len(split.y))):
        pass
"""


def bench_memory(
    sizes: list[int],
    root: Path,
    model: str,
    model_params: list[str],
    loader_only: bool = False,
    link: int = 0,
    max_batches: int = 0,
) -> list[dict[str, Any]]:
    rows = []
    params = [a for p in model_params for a in ("--set", f"model.params.{p}")]
    for n in sizes:
        folder = make_folder(root, n, link_from=make_folder(root, link) if link and n > link else None)
        run = root / f"run{n}"
        run.mkdir(exist_ok=True)
        if loader_only:  # maasctl's data pipeline alone over every split: decoding is what grows with the dataset
            gib, seconds, rc = peak_memory(
                [sys.executable, "-c", LOADER_ONLY, str(folder), str(WORKERS), str(BATCH)], run
            )
            rows.append({"images": n, "loader_only": True, "peak_pss_gib": round(gib, 3), "seconds": round(seconds, 1)})
            print(json.dumps(rows[-1]), flush=True)
            continue
        cmd = [
            sys.executable, "-m", "maasctl", "train", "--device", "cpu",
            "--set", "data.source=image_folder", "--set", f"data.root={folder}", "--set", f"data.image_size=[{SIZE},{SIZE}]",
            "--set", f"model.name={model}", *params, "--set", "train.epochs=1", "--set", f"train.batch_size={BATCH}",
            "--set", f"train.data_workers={WORKERS}", "--set", "train.tensorboard=false",
            *(["--set", f"train.max_batches_per_epoch={max_batches}"] if max_batches else []),
        ]  # fmt: skip
        gib, seconds, rc = peak_memory(cmd, run)
        rows.append(
            {
                "images": n,
                "model": model,
                "max_batches": max_batches or None,
                "peak_pss_gib": round(gib, 3),
                "seconds": round(seconds, 1),
                "exit": rc,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) == 2:
        print(f"ratio {rows[1]['images']}/{rows[0]['images']}: {rows[1]['peak_pss_gib'] / rows[0]['peak_pss_gib']:.3f}")
    return rows


# --- speed -----------------------------------------------------------------------------------------------------


def _recipe(folder: Path, model: str, model_params: list[str]):
    from maasctl.recipe import load_recipe

    return load_recipe(
        None,
        [
            "data.source=image_folder",
            f"data.root={folder}",
            f"data.image_size=[{SIZE},{SIZE}]",
            f"model.name={model}",
            *(f"model.params.{p}" for p in model_params),
            "train.device=cpu",
            "train.epochs=1",
            f"train.batch_size={BATCH}",
            f"train.data_workers={WORKERS}",
            "train.tensorboard=false",
            "train.schedule=constant",
        ],
    )


def _torchvision_loader(folder: Path, files: set[str]):
    import torch
    from torchvision import datasets
    from torchvision.transforms import v2

    tf = v2.Compose([v2.Resize(SIZE), v2.CenterCrop(SIZE), v2.PILToTensor()])
    ds = datasets.ImageFolder(str(folder), transform=tf)
    ds.samples = [s for s in ds.samples if s[0] in files]  # the same training split as maasctl's
    ds.imgs = ds.samples
    return torch.utils.data.DataLoader(
        ds, batch_size=BATCH, shuffle=True, num_workers=WORKERS, pin_memory=False, persistent_workers=True
    )


def bench_speed(n: int, root: Path, rounds: int, model_name: str, model_params: list[str]) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from maasctl.data import build_dataset
    from maasctl.models import create_model
    from maasctl.train.rundir import create_run_dir
    from maasctl.train.streaming import StreamFeed
    from maasctl.train.trainer import Trainer

    folder = make_folder(root, n)
    recipe = _recipe(folder, model_name, model_params)
    data = build_dataset(recipe.data, 0)
    train = data.train
    files = {str(f) for f in train.x.files}
    feed = StreamFeed(train, torch.device("cpu"), workers=WORKERS, persistent=True)
    tv = _torchvision_loader(folder, files)
    mean = torch.tensor(data.preprocessing["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(data.preprocessing["std"]).view(1, 3, 1, 1)

    def ours_loader() -> float:
        start = time.perf_counter()
        for _ in feed.batches(BATCH, torch.randperm(len(train.y))):
            pass
        return len(train.y) / (time.perf_counter() - start)

    def tv_loader() -> float:
        start = time.perf_counter()
        for x, _ in tv:
            x = (x.float() / 255 - mean) / std
        return len(train.y) / (time.perf_counter() - start)

    def ours_epoch() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(recipe)
            trainer.log = lambda _m: None
            run_dir = create_run_dir(Path(tmp), "r")
            trainer.fit(run_dir)
            trainer.close()
            import csv

            with open(run_dir / "metrics.csv") as f:
                row = next(csv.DictReader(f))
            return len(train.y) / (float(row["data_wait_seconds"]) + float(row["compute_seconds"]))

    def tv_epoch() -> float:
        torch.manual_seed(0)
        model = create_model(
            model_name, input_shape=(3, SIZE, SIZE), num_classes=10, **dict(_param(p) for p in model_params)
        )
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
        model.train()
        start = time.perf_counter()
        for x, y in tv:
            x = (x.float() / 255 - mean) / std
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return len(train.y) / (time.perf_counter() - start)

    out: dict[str, Any] = {"images": n, "train_split": len(train.y), "workers": WORKERS, "batch": BATCH}
    for name, a, b in (("loader", ours_loader, tv_loader), ("training_epoch", ours_epoch, tv_epoch)):
        a(), b()  # warm-up: page cache, worker start-up
        ratios, ours, theirs = [], [], []
        for r in range(rounds):
            pair = (a, b) if r % 2 == 0 else (b, a)
            results = {fn: fn() for fn in pair}
            ours.append(results[a])
            theirs.append(results[b])
            ratios.append(results[a] / results[b])
        out[name] = {
            "maasctl_images_per_s": round(statistics.median(ours), 1),
            "torchvision_images_per_s": round(statistics.median(theirs), 1),
            "ratio_median": round(statistics.median(ratios), 3),
            "ratios": [round(r, 3) for r in ratios],
        }
        print(name, json.dumps(out[name]), flush=True)
    return out


def _param(kv: str) -> tuple[str, Any]:
    import yaml

    key, _, value = kv.partition("=")
    return key, yaml.safe_load(value)


# --- data.cache ------------------------------------------------------------------------------------------------


def bench_cache(n: int, root: Path, epochs: int) -> dict[str, Any]:
    """Images/s of the training loader (random-resized-crop + flip, 2 workers each, batches of 64) per epoch, without
    a cache and with data.cache ram and disk (a fresh disk cache under `root`); epoch 1 fills the cache. The three
    loaders take their epochs in turn (none, ram, disk, none, ...), so a change in the machine's load hits all three."""
    import shutil

    import torch

    from maasctl.data import build_dataset
    from maasctl.recipe import load_recipe
    from maasctl.train.streaming import StreamFeed, train_transform

    folder = make_folder(root, n)
    shutil.rmtree(root / "cache", ignore_errors=True)
    feeds, rates = {}, {}
    for kind in ("none", "ram", "disk"):
        recipe = load_recipe(
            None,
            [
                "data.source=image_folder", f"data.root={folder}", f"data.image_size=[{SIZE},{SIZE}]",
                "data.augment.random_resized_crop=[0.08,1.0]", "data.augment.horizontal_flip=true",
                f"data.cache={kind}", f"data.cache_dir={root / 'cache'}",
            ],
        )  # fmt: skip
        data = build_dataset(recipe.data, 0)
        transform = train_transform(data.augment, data.preprocessing)
        feeds[kind] = (StreamFeed(data.train, torch.device("cpu"), workers=WORKERS, transform=transform), data.train)
        rates[kind] = []
    for _ in range(epochs):
        for kind, (feed, train) in feeds.items():
            start = time.perf_counter()
            for _x, _y in feed.batches(BATCH, torch.randperm(len(train.y))):
                pass
            rates[kind].append(round(len(train.y) / (time.perf_counter() - start), 1))
    out: dict[str, Any] = {"images": n, "train_split": len(train.y), "workers": WORKERS, "batch": BATCH}
    for kind, (feed, train) in feeds.items():
        out[kind] = {"images_per_s_by_epoch": rates[kind], "cpu_ms_per_image": _cpu_per_image(feed, train)}
        if feed.cache is not None:
            out[kind]["cache_gib"] = round(train.x.cache.nbytes / 2**30, 3)
            out[kind]["decodes"] = int(feed.cache.decodes.sum())
        print(kind, json.dumps(out[kind]), flush=True)
    return out


def _cpu_per_image(feed: Any, train: Any, count: int = 400) -> float:
    """CPU milliseconds (this process's, so other load on the machine barely counts) a worker spends per training
    image: the same dataset and transform as `feed`'s workers, with its cache as the epochs above left it."""
    import torch

    from maasctl.train.streaming import ImageFiles

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker; idle intra-op threads spinning would count as CPU time
    ds = ImageFiles(train.x.files, train.y, train.x.spec, feed._loader.dataset.transform, feed.cache)
    count = min(count, len(ds))
    best = float("inf")
    for _ in range(3):  # the least of 3 passes: the cost of the work, not of what else the machine ran meanwhile
        start = time.process_time()
        for i in range(count):
            ds[i]
        best = min(best, time.process_time() - start)
    torch.set_num_threads(threads)
    return round(1000 * best / count, 2)


# --- fine-tuning -----------------------------------------------------------------------------------------------


def _shapes(folder: Path, classes: list[int], per_class: int, seed: int, palette: int) -> Path:
    """Shape classes (0 ellipse, 1 rectangle, 2 triangle, 3 cross, 4 ring, 5 diagonal bar) at random places, sizes
    and colours on noisy backgrounds; `palette` shifts the colours, so B is related to A but not the same."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for c in classes:
        (folder / f"shape{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            bg = tuple(int(v) for v in rng.integers(0, 100, 3) + palette * 80)
            fg = tuple(int(v) for v in 255 - rng.integers(0, 90, 3) - palette * 60)
            img = Image.new("RGB", (32, 32), bg)
            d = ImageDraw.Draw(img)
            cx, cy, r = (int(v) for v in (rng.integers(11, 21), rng.integers(11, 21), rng.integers(7, 11)))
            box = (cx - r, cy - r, cx + r, cy + r)
            if c == 0:
                d.ellipse(box, fill=fg)
            elif c == 1:
                d.rectangle(box, fill=fg)
            elif c == 2:
                d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
            elif c == 3:
                d.rectangle((cx - r, cy - 2, cx + r, cy + 2), fill=fg)
                d.rectangle((cx - 2, cy - r, cx + 2, cy + r), fill=fg)
            elif c == 4:
                d.ellipse(box, outline=fg, width=3)
            else:
                d.line((cx - r, cy - r, cx + r, cy + r), fill=fg, width=4)
            noise = rng.integers(-20, 20, (32, 32, 3))
            Image.fromarray(np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8)).save(
                folder / f"shape{c}" / f"{i}.png"
            )
    return folder


def bench_finetune(root: Path, a_epochs: int, b_epochs: int) -> dict[str, Any]:
    a = _shapes(root / "A", list(range(6)), 80, seed=1, palette=0)
    b = _shapes(root / "B", [0, 1, 2, 3], 15, seed=2, palette=1)
    common = [
        "--device", "cpu", "--set", "data.source=image_folder", "--set", "data.image_size=[32,32]",
        "--set", "model.name=timm/test_resnet", "--set", "train.batch_size=32", "--set", "train.data_workers=1",
        "--set", "train.tensorboard=false", "--set", "train.seed=0",
    ]  # fmt: skip

    def train(name: str, folder: Path, epochs: int, *extra: str) -> list[float]:
        if not (root / "artifacts" / "runs" / name / "summary.json").exists():  # made by an earlier call: reused
            subprocess.run(
                [sys.executable, "-m", "maasctl", "train", *common, "--set", f"data.root={folder}",
                 "--set", f"train.epochs={epochs}", "--name", name, *extra],
                cwd=root, check=True, capture_output=True,
            )  # fmt: skip
        import csv

        with open(root / "artifacts" / "runs" / name / "metrics.csv") as f:
            return [round(float(r["val_accuracy"]), 3) for r in csv.DictReader(f)]

    out = {"A": train("A", a, a_epochs)}
    out["B_scratch"] = train("B-scratch", b, b_epochs)
    out["B_from_A"] = train("B-from-A", b, b_epochs, "--set", "model.params.pretrained=run:A")
    out["B_from_A_head_first"] = train(
        "B-from-A-head-first", b, b_epochs, "--set", "model.params.pretrained=run:A",
        "--set", "train.finetune.freeze_backbone_epochs=2", "--set", "train.finetune.head_lr=0.01",
    )  # fmt: skip
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["memory", "speed", "cache", "finetune"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--model", default="mobilenet_v3_small", help="memory, speed: the model trained")
    parser.add_argument("--params", nargs="*", default=[], help="memory, speed: model.params as KEY=VALUE")
    parser.add_argument("--loader-only", action="store_true", help="memory: the data pipeline alone, no training")
    parser.add_argument(
        "--link", type=int, default=0, help="memory: sizes above this are hard links to this many generated JPEGs"
    )
    parser.add_argument(
        "--max-batches",
        type=int,
        default=0,
        help="memory: train.max_batches_per_epoch (validation and test stay whole); 0: the whole training split",
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="cache: loader epochs per setting")
    parser.add_argument("--a-epochs", type=int, default=6)
    parser.add_argument("--b-epochs", type=int, default=6)
    parser.add_argument("--root", type=Path, default=None, help="where to keep the generated images (default: temp)")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="maasctl-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    if args.what == "memory":
        bench_memory(args.sizes, root, args.model, args.params, args.loader_only, args.link, args.max_batches)
    elif args.what == "cache":
        bench_cache(args.images, root, args.epochs)
    elif args.what == "speed":
        bench_speed(args.images, root, args.rounds, args.model, args.params)
    else:
        bench_finetune(root, args.a_epochs, args.b_epochs)


if __name__ == "__main__":
    main()
