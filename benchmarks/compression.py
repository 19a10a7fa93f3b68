"""Compression variants side by side: test accuracy, ONNX size and onnxruntime CPU latency, averaged over seeds.

    python benchmarks/compression.py                          # 3 seeds, the README figures
    python benchmarks/compression.py --seeds 0 --repeats 10   # a quick look
    python benchmarks/compression.py --json                   # one JSON object: the per-seed rows and the table
    python benchmarks/compression.py --keep ws                # runs and models kept in ws; run again, they are reused

On the image-folder digits example (`maasctl examples`; the recipe recipes/digits_folder_resnet18.yaml), per seed:
the teacher (ResNet-18, the recipe as it is but for `--teacher-label-smoothing`), a small student trained from
scratch, and the same student distilled from the teacher (`distill.teacher` = the teacher's fp32 ONNX export), each
exported to ONNX and again with `--quantize int8` stacked on top. Every model is measured by `maasctl benchmark`'s
own code (maasctl/benchmark.py: the ONNX model's accuracy on its recipe's test split, file size, parameters, median
latency at batch 1 and 32 on CPU). Each seed seeds the split, the initial weights and the batch order; a seed's
teacher and students share its split.

Rows come from functions, one per kind of variant (`teacher_rows`, `student_rows`, `pruned_rows`: the teacher
pruned to half its channels by `maasctl prune`, through benchmarks/pruning.py), each returning one row per
exported model. With --keep, finished runs and exports already in the folder with the same recipe are reused
(benchmarks/reuse.py says what counts as the same).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _cli import cli

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/reuse.py and benchmarks/pruning.py
RECIPE = ROOT / "recipes" / "digits_folder_resnet18.yaml"
QUIET = ["--set", "train.tensorboard=false"]


def student(args: argparse.Namespace) -> list[str]:
    """The student: the registry's small CNN at `--student-width` (4: ~2k parameters, 8: ~7k, against ResNet-18's
    11M), otherwise trained by the teacher's recipe (optimizer, schedule, augmentation, label smoothing)."""
    return ["--set", "model.name=cnn_small", "--set", f"model.params.width={args.student_width}"]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(ws: Path, name: str, seed: int, *overrides: str, epochs: int | None = None) -> Path:
    """The run trained by RECIPE with `--set` `overrides` (pairs of "--set", "key=value"); with --keep, a run already
    finished in `ws` with the same resolved recipe (benchmarks/reuse.py) is reused rather than trained again."""
    from reuse import finished_run

    from maasctl.recipe import load_recipe, recipe_sha256

    more = ["--set", f"train.epochs={epochs}"] if epochs else []
    args = ["--set", f"train.seed={seed}", *QUIET, *more, *overrides]
    sha = recipe_sha256(load_recipe(RECIPE, args[1::2]))
    run = finished_run(ws / "artifacts" / "runs", name, sha)
    if run is not None:
        say(f"reused run {run.name} (recipe sha256 {sha[:12]})")
        return run
    out = json.loads(cli("train", str(RECIPE), "--name", name, *args, "--json", cwd=ws))
    return ws / out["run_dir"]  # `name` itself, or name-2... when an unfinished or different run holds the name


def exported_rows(run: Path, variant: str, seed: int, repeats: int) -> list[dict[str, Any]]:
    """The run exported (fp32) and exported with int8 stacked, each measured as `maasctl benchmark` measures."""
    from pruning import export_measured

    rows = []
    for fmt in ("fp32", "int8"):
        m = export_measured(run, f"{run.name}-{fmt}", int8=fmt == "int8", repeats=repeats)
        rows.append(
            {
                "variant": variant,
                "format": fmt,
                "seed": seed,
                "accuracy": m["metrics"]["accuracy"],
                "parameters": m["parameters"],
                "bytes": m["bytes"],
                "latency_ms_b1": m["latency_ms_b1"],
                "latency_ms_b32": m["latency_ms_b32"],
            }
        )
    return rows


def teacher_rows(ws: Path, seed: int, args: argparse.Namespace) -> tuple[Path, list[dict[str, Any]]]:
    """The teacher, ResNet-18 trained by the recipe but for its label smoothing; its fp32 export teaches the rest."""
    smoothing = ["--set", f"train.label_smoothing={args.teacher_label_smoothing}"]
    run = train(ws, f"teacher-s{seed}", seed, *smoothing, epochs=args.epochs)
    return run, exported_rows(run, "teacher resnet18", seed, args.repeats)


def student_rows(ws: Path, seed: int, teacher_run: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The small student from scratch, and the same student distilled from `teacher_run` (same seed, same split).
    The teacher is its fp32 ONNX export (teacher_rows files it), run by onnxruntime: the same function as the
    checkpoint (export's parity gate), ~7x faster than the PyTorch checkpoint on this CPU (0.3 s against 2 s per
    batch of 64), and the teacher runs on every training batch."""
    epochs = args.student_epochs or args.epochs
    scratch = train(ws, f"scratch-s{seed}", seed, *student(args), epochs=epochs)
    distill = [
        "--set", f"distill.teacher={ws / 'artifacts' / 'models' / f'{teacher_run.name}-fp32'}",
        "--set", f"distill.temperature={args.temperature}",
        "--set", f"distill.alpha={args.alpha}",
    ]  # fmt: skip
    distilled = train(ws, f"distilled-s{seed}", seed, *student(args), *distill, epochs=epochs)
    return exported_rows(scratch, "student from scratch", seed, args.repeats) + exported_rows(
        distilled, "student distilled", seed, args.repeats
    )


def pruned_rows(ws: Path, seed: int, teacher_run: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The teacher pruned to half its channels and fine-tuned (`maasctl prune`, benchmarks/pruning.py), fp32 and int8."""
    from pruning import prune_rows

    rows = prune_rows(teacher_run, ratio=0.5, epochs=args.prune_epochs, seed=seed, repeats=args.repeats, teacher=False)
    keys = ("accuracy", "parameters", "bytes", "latency_ms_b1", "latency_ms_b32")
    return [
        {
            "variant": "teacher pruned 50%",
            "format": r["variant"].rsplit(" ", 1)[1],
            "seed": seed,
            **{k: r[k] for k in keys},
        }
        for r in rows
    ]


# Variants built from the teacher's run, one function each: (workspace, seed, teacher run, args) -> rows.
VARIANTS: list[Callable[[Path, int, Path, argparse.Namespace], list[dict[str, Any]]]] = [student_rows, pruned_rows]


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread (population standard deviation) over the seeds, per variant and format, in first-seen order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["format"]), []).append(r)
    table = []
    for (variant, fmt), rs in groups.items():
        entry: dict[str, Any] = {"variant": variant, "format": fmt, "seeds": [r["seed"] for r in rs]}
        for key in ("accuracy", "bytes", "parameters", "latency_ms_b1", "latency_ms_b32"):
            values = [r[key] for r in rs if r[key] is not None]
            entry[key] = statistics.fmean(values) if values else None
            entry[f"{key}_spread"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        table.append(entry)
    return table


def print_table(table: list[dict[str, Any]]) -> None:
    print(
        "| variant | format | test accuracy (mean ± sd) | parameters | ONNX size | latency b1 (ms) | latency b32 (ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    for t in table:
        print(
            f"| {t['variant']} | {t['format']} | {t['accuracy']:.2%} ± {t['accuracy_spread']:.2%} "
            f"| {t['parameters'] or 0:,.0f} | {t['bytes'] / 1024:,.0f} KiB "
            f"| {t['latency_ms_b1']:.3f} ± {t['latency_ms_b1_spread']:.3f} "
            f"| {t['latency_ms_b32']:.3f} ± {t['latency_ms_b32_spread']:.3f} |"
        )


def measure_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every variant's rows, seed after seed, in a workspace with the example image folder."""
    with tempfile.TemporaryDirectory(prefix="maasctl-compression-") as tmp:
        ws = (args.keep or Path(tmp)).resolve()  # absolute: the work below runs from inside it (chdir, cwd=ws)
        ws.mkdir(parents=True, exist_ok=True)
        os.chdir(ws)  # the recipe's data.root is relative, and evaluation (in this process) reads it from here
        cli("examples", str(ws / "data" / "examples"), cwd=ws)  # the recipe's image folder, data/examples/digits_png
        rows: list[dict[str, Any]] = []
        for seed in args.seeds:
            start = len(rows)
            teacher_run, rows_t = teacher_rows(ws, seed, args)
            rows += rows_t
            for variant in VARIANTS:
                rows += variant(ws, seed, teacher_run, args)
            print(f"seed {seed}: " + json.dumps(rows[start:]), file=sys.stderr, flush=True)
    return rows


def read_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    if text.lstrip().startswith("{"):
        return json.loads(text)["rows"]
    return [r for line in text.splitlines() if line.startswith("seed ") for r in json.loads(line.partition(": ")[2])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="every run's epochs (default: the recipe's)")
    # Defaults: the setting that met the target on three seeds (README, "Compression side by side", lists
    # every setting tried): the width-4 student (1,854 parameters) for 24 epochs, taught at T = 4, alpha 0.5 by a
    # teacher trained without label smoothing (the recipe's smoothed teacher is nearly flat at T = 4 and taught far
    # less). Wider students, or the same one for fewer epochs, either needed no teacher or stayed over a point below it.
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.5, help="the teacher's share of the student's loss")
    ap.add_argument("--student-width", type=int, default=4, help="cnn_small's width for the students")
    ap.add_argument("--student-epochs", type=int, default=24, help="the students' epochs (0: --epochs)")
    ap.add_argument("--teacher-label-smoothing", type=float, default=0.0, help="the teacher's (recipe: 0.1)")
    ap.add_argument("--prune-epochs", type=int, default=3, help="fine-tuning epochs after pruning the teacher")
    ap.add_argument("--repeats", type=int, default=30, help="latency: median of this many runs")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temp folder)")
    ap.add_argument("--json", action="store_true", help="print one JSON object (rows and table) instead of the table")
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="train nothing: the table of the rows in these files (--json outputs, or the stderr logs of runs, whose "
        "'seed N: [...]' lines hold each finished seed's rows), e.g. of seeds run as separate processes at once",
    )
    args = ap.parse_args()
    rows = [r for path in args.merge for r in read_rows(path)] if args.merge else measure_all(args)
    table = summarise(rows)
    if args.json:
        print(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "table": table}))
    else:
        print_table(table)


if __name__ == "__main__":
    main()
