"""Train every local example recipe in recipes/ in full and print a markdown table of test accuracy and time.

    python benchmarks/recipes.py [--workdir DIR] [--only NAME ...]

Runs `maasctl examples` and `maasctl train RECIPE --json` in a scratch folder, as a user would, and reads the
figures back from each run's summary.json (train_seconds: the epochs' wall time, without start-up or the final
test pass). Recipes whose data must be downloaded (torchvision) are listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="recipe file names to run")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="maasctl-recipes-"))
    subprocess.run([sys.executable, "-m", "maasctl", "examples"], cwd=workdir, check=True, capture_output=True)
    rows = []
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        if args.only and recipe.name not in args.only:
            continue
        header = recipe.read_text().splitlines()[0]
        if "data.download=true" in header:
            rows.append(f"| `{recipe.name}` | — | — | — | needs the dataset's files (download once) |")
            continue
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "maasctl", "train", str(recipe), "--json"],
            cwd=workdir,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            rows.append(f"| `{recipe.name}` | — | — | — | failed: {proc.stderr.strip().splitlines()[-1][:80]} |")
            continue
        out = json.loads(proc.stdout)
        summary = json.loads((workdir / out["run_dir"] / "summary.json").read_text())
        m = summary["metrics"]
        score = (
            f"{m['test_accuracy']:.2%}" if "test_accuracy" in m else f"RMSE {m['test_rmse']:.3f}, R² {m['test_r2']:.3f}"
        )
        rows.append(
            f"| `{recipe.name}` | {score} | {summary['epochs']} | {summary['train_seconds']:.1f} s | {wall:.1f} s wall |"
        )
        print(rows[-1], flush=True)
    print(
        "\n| recipe | test accuracy (regression: RMSE, R²) | epochs | training time | whole command |\n|---|---|---|---|---|"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
