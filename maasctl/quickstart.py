"""`maasctl quickstart`: train → export → predict on the embedded digits, the whole path in one command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from maasctl.errors import CheckFailed


def run_quickstart(artifacts: Path, epochs: int | None, samples: int, log: Callable[[str], None]) -> None:
    from PIL import Image
    from rich.console import Console
    from rich.table import Table

    from maasctl.export.onnx_export import export_run
    from maasctl.predict import LocalTarget, predict
    from maasctl.recipe import load_recipe
    from maasctl.repository import ModelRepository
    from maasctl.train.progress import epoch_reporter
    from maasctl.train.rundir import create_run_dir
    from maasctl.train.trainer import Trainer

    recipe = load_recipe(None, [f"train.epochs={epochs}"] if epochs else [])
    trainer = Trainer(recipe)
    run_dir = create_run_dir(artifacts / "runs", recipe.name)
    log(f"1/3 train {recipe.model.name} on the embedded digits → {run_dir}")
    with epoch_reporter(Console(stderr=True, soft_wrap=True), recipe.train.epochs) as on_epoch:
        result = trainer.fit(run_dir, on_epoch=on_epoch)

    log("2/3 export to ONNX and check it against PyTorch")
    exported = export_run(run_dir, ModelRepository(artifacts / "models"), log=log)
    log(f"filed {exported.name} version {exported.version} at {exported.path}")

    # Held-out digits as ordinary PNG files: predict reads them the way it would read a user's images.
    sample_dir = run_dir / "samples"
    sample_dir.mkdir(exist_ok=True)
    test = trainer.data.test
    files, truth = [], []
    for i in range(min(samples, len(test.y))):
        path = sample_dir / f"test-{i:03d}-label-{test.y[i]}.png"
        Image.fromarray(test.raw[i]).save(path)
        files.append(str(path))
        truth.append(trainer.data.labels[test.y[i]])
    log(f"3/3 predict {len(files)} held-out images with onnxruntime")
    predictions = predict(LocalTarget(str(exported.path), artifacts / "models"), files)

    table = Table("image", "true", "predicted", "probability", title="held-out digits")
    for p, t in zip(predictions, truth):
        table.add_row(Path(p.input).name, t, p.label, f"{p.probability:.3f}", style=None if p.label == t else "red")
    console = Console(soft_wrap=True)
    console.print(table)
    m = result.metrics
    console.print(f"test accuracy: {m['test_accuracy']:.2%} on {len(test.y)} held-out digits", markup=False)
    console.print(
        f"next: maasctl serve  →  maasctl predict {exported.name} {files[0]} --url http://127.0.0.1:8000", markup=False
    )
    if m["test_accuracy"] < 0.5:
        raise CheckFailed("test accuracy is below 50%: training did not work")
