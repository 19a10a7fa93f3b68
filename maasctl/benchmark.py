"""`maasctl benchmark`: model variants side by side, to choose which one to serve.

For each model (a repository model, `name:version`, a model folder, or a run folder not yet exported): its
parameters, file size, score on its recipe's split (what `maasctl evaluate` reports), and onnxruntime latency at
batch 1 and 32 on the chosen device, on samples of that split. A run is exported to a temporary repository first
(the same export, parity gate included, as `maasctl export`); nothing is filed.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from maasctl.errors import UsageError

LATENCY_BATCHES = (1, 32)


def benchmark_models(
    specs: list[str],
    repo: Path,
    *,
    device: str = "cpu",
    split: str = "test",
    repeats: int = 30,
    log: Callable[[str], None] = lambda message: None,
) -> list[dict[str, Any]]:
    """One row per model, in the order given."""
    if not specs:
        raise UsageError("name at least one model: a repository name, name:version, a model folder or a run")
    if repeats < 1:
        raise UsageError(f"--repeats {repeats}: give 1 or more")
    rows = []
    for spec in specs:
        with _as_repository_model(spec, repo, log) as (model_spec, model_repo, kind):
            row = measure_model(model_spec, model_repo, device=device, split=split, repeats=repeats)
            rows.append({"model": spec, "kind": kind, **row})
    return rows


@contextlib.contextmanager
def _as_repository_model(spec: str, repo: Path, log: Callable[[str], None]) -> Iterator[tuple]:
    """(model spec, repository, kind): a repository model as it is; a run exported to a temporary repository."""
    run_dir = _run_dir(spec)
    if run_dir is None:
        yield spec, repo, "model"
        return
    from maasctl.export.onnx_export import export_run  # torch: only for runs
    from maasctl.repository import ModelRepository

    with tempfile.TemporaryDirectory(prefix="maasctl-benchmark-") as tmp:
        log(f"{spec}: exporting the run's best checkpoint to a temporary repository (nothing is filed)")
        result = export_run(run_dir, ModelRepository(Path(tmp)), name=run_dir.name, log=log)
        yield str(result.path), Path(tmp), "run"


def _run_dir(spec: str) -> Path | None:
    """A training run, named by its folder (artifacts/runs/NAME); a bare name is a repository model."""
    candidate = Path(spec)
    if (candidate / "checkpoints" / "best.pt").is_file() and (candidate / "recipe.yaml").is_file():
        return candidate
    return None


def _feeds(batch: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """A subword text model's several inputs come packed in its dataset's splits (maasctl/data/text.py)."""
    from maasctl.preprocess import packed_feeds

    return packed_feeds(batch, names) if len(names) > 1 else {names[0]: batch}


def measure_model(spec: str, repo: Path, *, device: str, split: str, repeats: int) -> dict[str, Any]:
    from maasctl.evaluate import evaluate_model, split_inputs
    from maasctl.export.compress import latency_ms  # numpy and onnxruntime only: how export times its variants
    from maasctl.inputs.outputs import scores_output
    from maasctl.repository import ModelRepository, resolve_model
    from maasctl.runtime import load_model

    version = resolve_model(spec, ModelRepository(repo))
    scored = evaluate_model(spec, repo, split=split)
    model = load_model(version, device=device)
    x = split_inputs(model.manifest, split)
    name_out = scores_output(model.manifest)
    latency = {}
    for b in LATENCY_BATCHES:
        batch = np.ascontiguousarray(np.resize(x, (b, *x.shape[1:])) if len(x) < b else x[:b])
        feeds = _feeds(batch, [t.name for t in model.inputs])
        latency[f"latency_ms_b{b}"] = latency_ms(lambda: model.run(feeds, [name_out]), repeats)  # noqa: B023
    onnx_path = version.path / model.manifest["onnx"]["file"]
    return {
        "name": version.name,
        "version": version.version,
        "provider": model.provider,
        "parameters": _parameters(onnx_path),
        "bytes": onnx_path.stat().st_size,
        "split": split,
        "samples": scored["samples"],
        "metrics": scored["metrics"],
        **latency,
    }


def _parameters(onnx_path: Path) -> int | None:
    """The number of weights in the graph's initializers (int8 weights count once, as the parameters they are);
    None where the `onnx` package is not installed (a serving box)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return None
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    # Quantized graphs keep scales and zero points as initializers too (onnxruntime's quantizer names them so):
    # they are how the weights are stored, not more weights. Single values are shapes and constants.
    return int(
        sum(
            numpy_helper.to_array(t).size
            for t in graph.initializer
            if np.prod(t.dims) > 1 and not t.name.endswith(("_scale", "_zero_point"))
        )
    )
