"""maasctl's tabular models against scikit-learn's HistGradientBoosting on the same splits.

    pip install -e '.[bench]' && python benchmarks/tabular.py [--seeds 0 1 2] [--threads 1]

For each example table (`maasctl examples`: penguins.csv, classification with categories and blanks;
deliveries.csv, regression) and each seed, maasctl trains its example recipe (recipes/penguins_mlp.yaml,
recipes/deliveries_mlp.yaml) in this process, and HistGradientBoostingClassifier / Regressor (default settings)
fits the same training split: the same rows, encoded the same way (maasctl's one-hot categories, median-imputed
numbers with missing indicators), regression targets in their own units. Both are scored on the same test split:
accuracy, or RMSE in the target's units. Training time is the fit alone (maasctl: the epochs' wall time from
summary.json, validation passes and checkpoint writes included; scikit-learn: `fit`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLES = {"penguins_mlp.yaml": "accuracy", "deliveries_mlp.yaml": "rmse"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenMP threads for both sides")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before scikit-learn's OpenMP starts
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="maasctl-tabular-"))
    os.chdir(work)  # the recipes name data/examples/...
    from maasctl.data.examples import write_examples

    write_examples(work / "data" / "examples")
    rows = []
    for recipe_name, metric in TABLES.items():
        results: dict[str, list[tuple[float, float]]] = {"maasctl": [], "hgb": []}
        for seed in args.seeds:
            ours, theirs = run_pair(recipe_name, metric, seed, work)
            results["maasctl"].append(ours)
            results["hgb"].append(theirs)
            print(
                f"{recipe_name} seed {seed}: maasctl {metric} {ours[0]:.4f} in {ours[1]:.2f} s; "
                f"HistGradientBoosting {theirs[0]:.4f} in {theirs[1]:.2f} s",
                flush=True,
            )
        rows.append(row(recipe_name, metric, results))
    print(f"\n{len(args.seeds)} seeds, {args.threads} thread(s); mean (min–max)\n")
    print("| table | metric | maasctl MLP | HistGradientBoosting | maasctl training time | HGB training time |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


def run_pair(recipe_name: str, metric: str, seed: int, work: Path) -> tuple[tuple[float, float], tuple[float, float]]:
    import numpy as np

    from maasctl.data import build_dataset
    from maasctl.preprocess import destandardize
    from maasctl.recipe import load_recipe
    from maasctl.train.trainer import Trainer

    recipe = load_recipe(ROOT / "recipes" / recipe_name, [f"train.seed={seed}", "train.device=cpu"])
    trainer = Trainer(recipe)
    trainer.log = lambda message: None
    try:
        run_dir = work / "runs" / f"{recipe.name}-{seed}"
        result = trainer.fit(run_dir)
    finally:
        trainer.close()
    summary = json.loads((run_dir / "summary.json").read_text())
    ours = (result.metrics[f"test_{metric}"], summary["train_seconds"])

    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    data = build_dataset(recipe.data, seed, recipe.task)  # the same splits and encoding as the run above
    if data.task == "regression":
        model = HistGradientBoostingRegressor(random_state=seed)
        y_train = destandardize(data.train.y, data.target)
    else:
        model = HistGradientBoostingClassifier(random_state=seed)
        y_train = data.train.y
    started = time.perf_counter()
    model.fit(data.train.x, y_train)
    seconds = time.perf_counter() - started
    predicted = model.predict(data.test.x)
    if data.task == "regression":
        score = float(np.sqrt(np.mean((predicted - destandardize(data.test.y, data.target)) ** 2)))
    else:
        score = float(np.mean(predicted == data.test.y))
    return ours, (score, seconds)


def row(recipe_name: str, metric: str, results: dict[str, list[tuple[float, float]]]) -> str:
    def spread(values: list[float], fmt: str) -> str:
        return f"{fmt.format(statistics.mean(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"

    fmt = "{:.2%}" if metric == "accuracy" else "{:.3f}"
    name = "test accuracy" if metric == "accuracy" else "test RMSE (minutes)"
    cells = [spread([r[0] for r in results[k]], fmt) for k in ("maasctl", "hgb")]
    times = [spread([r[1] for r in results[k]], "{:.2f} s") for k in ("maasctl", "hgb")]
    return f"| `{recipe_name}` | {name} | {cells[0]} | {cells[1]} | {times[0]} | {times[1]} |"


if __name__ == "__main__":
    main()
