"""Structured pruning's evidence: a resnet18 teacher against itself pruned to half its channels, each in fp32 and int8.

    python benchmarks/pruning.py                                 # trains the teacher (recipes/digits_folder_resnet18.yaml)
    python benchmarks/pruning.py --teacher artifacts/runs/digits-resnet18 --epochs 3 --repeats 50   # an existing run

`maasctl prune` (l1 importance) removes half the channels of every layer but the classifier's outputs and fine-tunes
for --epochs with the teacher's own recipe (same data split, same seed); `maasctl export` files fp32 and
`--quantize int8 --force` of both (int8 is filed even past its accuracy gate, so the table shows its real accuracy).
Each variant is then measured by maasctl/benchmark.py's `measure_model`, as `maasctl benchmark` measures: parameters,
ONNX file size, test accuracy, and onnxruntime's median latency at batch 1 and 32 on the CPU.

`prune_rows` is what benchmarks/compression.py calls; run on its own it prints the rows as a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from _cli import cli

ROOT = Path(__file__).resolve().parent.parent
TEACHER_RECIPE = ROOT / "recipes" / "digits_folder_resnet18.yaml"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/reuse.py


def export_measured(run: Path, name: str, *, int8: bool, repeats: int) -> dict[str, Any]:
    """`run` exported as model `name` (with `--quantize int8` stacked when `int8`) into the repository beside it
    (artifacts/models), or the model already exported from it that way (benchmarks/reuse.py); then measured as
    `maasctl benchmark` measures it (maasctl.benchmark.measure_model)."""
    from reuse import finished_export

    from maasctl.benchmark import measure_model

    run = run.resolve()
    artifacts = run.parent.parent
    repo = artifacts / "models"
    if finished_export(repo, name, run, "int8" if int8 else None):
        print(f"reused model {name}", file=sys.stderr, flush=True)
    else:
        quantize = ["--quantize", "int8", "--force"] if int8 else []
        # cwd: the recipe's relative data paths (data/examples/...) resolve from the folder above artifacts/
        cli(
            "export", str(run), "--name", name, *quantize, "--artifacts", str(artifacts), "--json", cwd=artifacts.parent
        )
    return measure_model(name, repo, device="cpu", split="test", repeats=repeats)


def prune_once(teacher_run: Path, *, ratio: float, epochs: int, importance: str) -> tuple[Path, dict[str, Any]]:
    """`maasctl prune` of `teacher_run` (resolved, under artifacts/runs/), or the pruned run already finished beside it
    with the same parent, ratio, importance and epochs (benchmarks/reuse.py); the run folder and its pruning record."""
    artifacts = teacher_run.parent.parent
    cwd = artifacts.parent
    pruned_name = f"{teacher_run.name}-pruned{round(ratio * 100)}"
    from reuse import finished_prune

    pruned_run = finished_prune(
        artifacts / "runs", pruned_name, teacher_run, ratio=ratio, importance=importance, epochs=epochs
    )
    if pruned_run is not None:
        print(f"reused run {pruned_run.name} (pruned from {teacher_run.name})", file=sys.stderr, flush=True)
        return pruned_run, json.loads((pruned_run / "summary.json").read_text())["pruning"]
    pruned = json.loads(
        cli(
            "prune",
            str(teacher_run),
            "--ratio",
            str(ratio),
            "--epochs",
            str(epochs),
            "--importance",
            importance,
            "--name",
            pruned_name,
            "--artifacts",
            str(artifacts),
            "--json",
            cwd=cwd,
        )
    )
    return cwd / pruned["run_dir"], pruned["pruning"]  # an absolute run_dir stays as it is


def prune_rows(
    teacher_run: Path,
    *,
    ratio: float = 0.5,
    epochs: int = 3,
    seed: int | None = None,
    importance: str = "l1",
    repeats: int = 30,
    teacher: bool = True,
) -> list[dict[str, Any]]:
    """Rows for the teacher and its pruned copy, each fp32 and int8: variant, run, parameters, bytes, accuracy,
    latency_ms_b1, latency_ms_b32, speedup_b32 (against the teacher in fp32). `teacher_run` is a run folder
    (artifacts/runs/NAME); the pruned run and the models are written beside it, under the same artifacts/.
    `seed`: the seed the caller trained the teacher with; the fine-tune keeps the teacher's recipe, so its data split
    and seed, and a different one is refused rather than silently ignored. `teacher=False`: the pruned rows alone
    (for a caller that measured the teacher already), without speed-ups."""
    from maasctl.recipe import load_recipe

    teacher_run = Path(teacher_run).resolve()
    recipe_seed = load_recipe(teacher_run / "recipe.yaml").train.seed
    if seed is not None and seed != recipe_seed:
        raise ValueError(f"seed {seed}: {teacher_run} was trained with train.seed {recipe_seed}")
    pruned_run, pruning = prune_once(teacher_run, ratio=ratio, epochs=epochs, importance=importance)
    rows = []
    variants = [("teacher", teacher_run)] if teacher else []
    for variant, run in [*variants, (f"pruned {ratio:.0%}", pruned_run)]:
        for precision in ("fp32", "int8"):
            m = export_measured(run, f"{run.name}-{precision}", int8=precision == "int8", repeats=repeats)
            rows.append(
                {
                    "variant": f"{variant} {precision}",
                    "run": run.name,
                    "parameters": m["parameters"],
                    "bytes": m["bytes"],
                    "accuracy": m["metrics"]["accuracy"],
                    "latency_ms_b1": m["latency_ms_b1"],
                    "latency_ms_b32": m["latency_ms_b32"],
                }
            )
    if teacher:
        for row in rows:
            row["speedup_b32"] = rows[0]["latency_ms_b32"] / row["latency_ms_b32"]
    rows[-2]["pruning"] = pruning  # params/MACs before and after, accuracy before fine-tuning
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | parameters | ONNX size | test accuracy | batch 1 ms | batch 32 ms | batch 32 speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['parameters']:,} | {r['bytes'] / 1e6:.2f} MB | {r['accuracy']:.2%} | "
            f"{r['latency_ms_b1']:.3f} | {r['latency_ms_b32']:.3f} | {r['speedup_b32']:.2f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, help="an existing run folder; default: train one in a temporary folder")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs after pruning")
    ap.add_argument("--teacher-epochs", type=int, default=None, help="the teacher's epochs (default: its recipe's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="maasctl-pruning-") as tmp:
        teacher = args.teacher
        if teacher is None:
            ws = Path(tmp)
            cli("examples", cwd=ws)
            extra = ["--set", f"train.epochs={args.teacher_epochs}"] if args.teacher_epochs else []
            out = cli("train", str(TEACHER_RECIPE), "--set", f"train.seed={args.seed}", *extra, "--json", cwd=ws)
            teacher = ws / json.loads(out)["run_dir"]
        rows = prune_rows(teacher, ratio=args.ratio, epochs=args.epochs, seed=args.seed, repeats=args.repeats)
    print(table(rows))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
