"""`maasctl export`: write ONNX, prove it computes what the PyTorch model computes, file it as a version.

Nothing is filed unless every check passes: the ONNX checker with shape inference, and onnxruntime
matching PyTorch on held-out samples at batch size 1 and at a full batch.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maasctl import __version__
from maasctl.data import build_dataset
from maasctl.errors import CheckFailed, UsageError
from maasctl.fileio import atomic_write_json, atomic_write_text, sha256_file
from maasctl.recipe import load_recipe
from maasctl.repository import MANIFEST, MANIFEST_FORMAT, ONNX_FILE, ModelRepository, discard
from maasctl.train.checkpoint import load_best_model

PARITY_SAMPLES = 256
STREAMED_REFERENCE = 2_000  # streamed images decoded for the drift reference (decoding them all could take hours)
MIN_OPSET, MAX_OPSET = 13, 23  # the recipe schema's export.opset range too


@dataclass
class ExportResult:
    name: str
    version: int
    path: Path
    exporter: str
    max_abs_diff: float
    top1_agreement: float
    compression: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        extra = {"compression": self.compression} if self.compression else {}
        return {
            "name": self.name,
            "version": self.version,
            "path": str(self.path),
            "exporter": self.exporter,
            "max_abs_diff": self.max_abs_diff,
            "top1_agreement": self.top1_agreement,
            **extra,
        }


# long: every step that can fail runs inside the staging try-block, so a failed export leaves nothing filed
def export_run(
    run_dir: Path,
    repo: ModelRepository,
    *,
    name: str | None = None,
    opset: int | None = None,
    atol: float | None = None,
    exporter: str = "auto",
    compress: str | None = None,
    max_accuracy_drop: float = 0.01,
    force: bool = False,
    log: Callable[[str], None] = lambda msg: None,
) -> ExportResult:
    """`compress` (int8 | fp16): the parity gate runs on the fp32 export first, then the compressed model is
    measured beside it (maasctl/export/compress.py), gated on `max_accuracy_drop`, and filed instead of it."""
    recipe = load_recipe(run_dir / "recipe.yaml")
    opset = opset or recipe.export.opset
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(
            f"--opset {opset}: choose {MIN_OPSET}..{MAX_OPSET} (what torch's exporter and the pinned onnxruntime support)"
        )
    atol = atol if atol is not None else recipe.export.atol
    model, meta = _trained_model(run_dir, recipe)
    output = "logits"
    if meta.get("task") == "regression":
        if compress is not None:
            raise UsageError(
                "--quantize/--fp16 are gated on accuracy, which a regression model has not; export it without them"
            )
        # The graph itself returns values in the target's units, so every client (OIP, Triton, predict) gets them.
        model, output = InTargetUnits(model, meta["target"]).eval(), "value"
    if meta["preprocessing"].get("kind") == "subword":  # the tokenizer the model was trained with (data/text.py)
        recipe.data._subword_spec = meta["preprocessing"]
    data = build_dataset(recipe.data, recipe.train.seed, recipe.task)
    samples = data.test.x[:PARITY_SAMPLES]
    sequence_axis = _takes_any_length(meta)
    staged = repo.staging_dir()
    report = None
    try:
        onnx_path = staged / ONNX_FILE
        if compress is None:
            used, diff, agreement = _export_checked(
                model, samples, onnx_path, opset, exporter, atol, sequence_axis, log, output
            )
        else:
            import tempfile

            from maasctl.export.compress import compress_and_measure

            with tempfile.TemporaryDirectory(prefix="maasctl-fp32-") as tmp:
                fp32_path = Path(tmp) / ONNX_FILE
                used, diff, agreement = _export_checked(
                    model, samples, fp32_path, opset, exporter, atol, sequence_axis, log
                )
                report = compress_and_measure(
                    fp32_path,
                    onnx_path,
                    compress,
                    meta,
                    data,
                    max_accuracy_drop=max_accuracy_drop,
                    force=force,
                    log=log,
                )
                _check_onnx(onnx_path)
        manifest = _manifest(run_dir, meta, onnx_path, opset, used, diff, agreement, sequence_axis)
        if meta["preprocessing"].get("kind") == "subword":  # the tokenizer is filed with the model
            from maasctl.export.text_export import file_tokenizer

            file_tokenizer(staged, manifest)
        if report is not None:
            manifest["metrics"] = report.pop("_metrics")  # the filed (compressed) model's own test metrics
            manifest["compression"] = report
        manifest["recipe"] = recipe.model_dump(mode="json")  # the model folder alone says how to rebuild its data
        if data.input_kind != "subword":  # not yet for pretrained encoders' several inputs (no drift gauges)
            manifest["drift"] = _drift_statistics(data, onnx_path)
        atomic_write_json(staged / MANIFEST, manifest)
        filed = repo.add_version(name or recipe.name, staged)
    except BaseException:
        discard(staged)
        raise
    # Triton reads <repo>/<name>/config.pbtxt beside the version folders: the same repository serves there too.
    atomic_write_text(filed.path.parent / "config.pbtxt", triton_config(filed.name, manifest))
    return ExportResult(filed.name, filed.version, filed.path, used, diff, agreement, report)


def _trained_model(run_dir: Path, recipe: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The run's best checkpoint in its architecture, in eval mode, and the metadata saved with it."""
    model, meta = load_best_model(run_dir, note=". Nothing was filed.")
    if (meta["model_name"], meta["model_params"]) != (recipe.model.name, recipe.model.params):
        raise UsageError(
            f"{run_dir}: the checkpoint holds a {meta['model_name']} {meta['model_params']}, but the run's recipe.yaml "
            f"names {recipe.model.name} {recipe.model.params}; the checkpoint comes from another recipe. Nothing was filed."
        )
    return model.eval(), meta


def _takes_any_length(meta: dict[str, Any]) -> bool:
    """A dynamic sequence axis only for models that take any length (the token-capable families); an MLP over a
    flattened sequence is fixed to its training length."""
    from maasctl.models.registry import get_model_entry

    return meta.get("input_kind") in ("sequence", "tokens") and "tokens" in get_model_entry(meta["model_name"]).inputs


class InTargetUnits(torch.nn.Module):
    """A regression model whose output is de-standardised: value = output * std + mean (training statistics)."""

    def __init__(self, model: torch.nn.Module, target: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("std", torch.tensor(target["std"], dtype=torch.float32))
        self.register_buffer("mean", torch.tensor(target["mean"], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.std + self.mean


def _export_checked(
    model,
    samples,
    onnx_path: Path,
    opset: int,
    exporter: str,
    atol: float,
    sequence_axis: bool,
    log,
    output: str = "logits",
) -> tuple[str, float, float]:
    """Export, check and compare, exporter by exporter: `auto` tries torch.export (dynamo) first and falls back to
    the TorchScript exporter when dynamo fails or its graph does not match PyTorch (it mis-traces some RNN
    patterns, e.g. a sequence length baked into an Expand). Returns (exporter, max diff, top-1 agreement)."""
    attempts = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    if hasattr(model, "input_names"):  # several named inputs (pretrained text encoders): TorchScript's exporter
        attempts = ["torchscript"]
    errors = []
    for kind in attempts:
        try:
            _export(model, samples[:2], onnx_path, opset, kind, sequence_axis, output)
            _check_onnx(onnx_path)
            diff, agreement, scale = _parity(model, onnx_path, samples, sequence_axis, output)
            log(f"exported with the {kind} exporter, opset {opset}")
            log(
                f"parity on {len(samples)} held-out samples: max |onnx - torch| = {diff:.3g}, top-1 agreement {agreement:.2%}"
            )
            if diff > atol * scale or agreement < 1.0:
                raise CheckFailed(
                    f"parity failed: max |onnx - torch| = {diff:.3g} (tolerance {atol:g} x logit scale {scale:.3g}), "
                    f"top-1 agreement {agreement:.2%}"
                )
            return kind, diff, agreement
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            errors.append(f"{kind}: {text}")
            if kind != attempts[-1]:
                log(f"the {kind} exporter failed ({text}); falling back to {attempts[attempts.index(kind) + 1]}")
    raise CheckFailed("ONNX export failed; nothing was filed:\n  " + "\n  ".join(errors))


def _export(
    model: torch.nn.Module,
    example: np.ndarray,
    path: Path,
    opset: int,
    kind: str,
    sequence_axis: bool,
    output: str = "logits",
) -> None:
    if hasattr(model, "input_names"):
        from maasctl.export import text_export

        return text_export.export(model, example, path, opset)
    args = (torch.from_numpy(example),)
    names = {"input_names": ["input"], "output_names": [output], "opset_version": opset, "external_data": False}
    # The exporters print progress on stdout; keep stdout for --json.
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "dynamo":
            dims = {0: torch.export.Dim("batch", min=1, max=65536)}
            if sequence_axis:
                dims[1] = torch.export.Dim("sequence", min=2, max=65536)
            torch.onnx.export(model, args, path, dynamo=True, verbose=False, dynamic_shapes=(dims,), **names)
        else:
            axes = {"input": {0: "batch", 1: "sequence"} if sequence_axis else {0: "batch"}, output: {0: "batch"}}
            torch.onnx.export(model, args, path, dynamo=False, dynamic_axes=axes, **names)


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)  # full_check runs strict shape inference
    except Exception as exc:
        raise CheckFailed(f"the exported model fails onnx.checker: {exc}") from None


def _parity(
    model: torch.nn.Module, onnx_path: Path, samples: np.ndarray, sequence_axis: bool, output: str = "logits"
) -> tuple[float, float, float]:
    """Largest |onnx - torch|, top-1 agreement and the logits' scale (max |logit|, at least 1: float32 error grows
    with magnitude, so the tolerance scales with it), at a full batch and at batch size 1 (a frozen batch axis
    shows only when the size changes), and for sequence models also at a shorter sequence length."""
    import onnxruntime as ort

    if hasattr(model, "input_names"):
        from maasctl.export import text_export

        return text_export.parity(model, onnx_path, samples)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = [samples]
    if sequence_axis and samples.shape[1] >= 4:
        inputs.append(np.ascontiguousarray(samples[:, : samples.shape[1] // 2]))
    diff, agreement, scale = 0.0, 1.0, 1.0
    with torch.no_grad():
        for x in inputs:
            expected = model(torch.from_numpy(x)).numpy()
            batched = session.run([output], {"input": x})[0]
            single = np.concatenate([session.run([output], {"input": x[i : i + 1]})[0] for i in range(min(8, len(x)))])
            diff = max(
                diff, float(np.abs(batched - expected).max()), float(np.abs(single - expected[: len(single)]).max())
            )
            agreement = min(agreement, float((batched.argmax(1) == expected.argmax(1)).mean()))
            scale = max(scale, float(np.abs(expected).max()))
    return diff, agreement, scale


def _drift_statistics(data, onnx_path: Path) -> dict[str, Any]:
    """The reference the server measures drift against (maasctl/drift.py): the training split's inputs, and the
    classes the filed model (compressed or not) predicts on the validation split. Text takes its reference from the
    validation split: the vocabulary was built on the training split, which so has no unknown tokens to compare."""
    import onnxruntime as ort

    from maasctl.drift import reference_statistics

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    split = "validation" if data.input_kind == "tokens" else "train"
    reference = data.validation.x if split == "validation" else data.train.x
    if not isinstance(reference, np.ndarray):  # images streamed from files: decode an evenly spaced sample of them
        reference = reference[np.linspace(0, len(reference) - 1, min(len(reference), STREAMED_REFERENCE)).astype(int)]
    if getattr(data, "task", "classification") == "regression":
        # Input drift only: the output is one value, not classes, so its "class" distribution is one bin (the
        # prediction PSI stays 0). Binning predicted values is left for later.
        predicted = np.zeros(len(data.validation.x), dtype=np.int64)
        return reference_statistics(
            data.input_kind, reference, data.preprocessing, predicted, 1, reference_split=split, output_name="value"
        )
    x = data.validation.x
    logits = [session.run(["logits"], {"input": x[i : i + 256]})[0] for i in range(0, len(x), 256)]
    predicted = np.concatenate(logits).argmax(axis=1) if logits else np.zeros(0, dtype=np.int64)
    return reference_statistics(
        data.input_kind, reference, data.preprocessing, predicted, data.num_classes, reference_split=split
    )


TRITON_TYPES = {"FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "FP16": "TYPE_FP16", "INT32": "TYPE_INT32"}


def triton_config(name: str, manifest: dict[str, Any], max_batch_size: int = 64) -> str:
    """A Triton model configuration for its onnxruntime backend. With a dynamic batch axis (what export
    writes) Triton may batch requests itself: dims then leave the batch axis out."""
    batched = all(t["shape"][0] == -1 for t in manifest["inputs"] + manifest["outputs"])

    def tensors(kind: str) -> str:
        parts = []
        for t in manifest[kind]:
            dims = ", ".join(str(d) for d in (t["shape"][1:] if batched else t["shape"]))
            parts.append(f'  {{ name: "{t["name"]}" data_type: {TRITON_TYPES[t["datatype"]]} dims: [ {dims} ] }}')
        return f"{kind[:-1]} [\n" + ",\n".join(parts) + "\n]\n"

    head = f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size if batched else 0}\n'
    return head + tensors("inputs") + tensors("outputs") + ("dynamic_batching { }\n" if batched else "")


def _manifest(
    run_dir: Path,
    meta: dict[str, Any],
    onnx_path: Path,
    opset: int,
    exporter: str,
    diff: float,
    agreement: float,
    sequence_axis: bool,
) -> dict[str, Any]:
    import json

    input_shape = [-1, *meta["input_shape"]]
    if sequence_axis:
        input_shape[1] = -1
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {
        "format": MANIFEST_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "maasctl_version": __version__,
        "task": meta.get("task", "classification"),
        # regression: the training targets' statistics; the graph already applies them (value = z * std + mean)
        **({"target": meta["target"]} if meta.get("task") == "regression" else {}),
        "input_kind": meta.get("input_kind", "image"),
        "inputs": [
            {
                "name": "input",
                "datatype": "INT64" if meta.get("input_kind") == "tokens" else "FP32",
                "shape": input_shape,
            }
        ],
        "outputs": [
            {
                "name": "value" if meta.get("task") == "regression" else "logits",
                "datatype": "FP32",
                "shape": [-1, meta["num_classes"]],
            }
        ],
        "labels": meta["labels"],
        "preprocessing": meta["preprocessing"],
        "source": {"run": str(run_dir.resolve()), "recipe_sha256": meta["recipe_sha256"], "model": meta["model_name"]},
        "metrics": summary.get("metrics", {}),
        "onnx": {
            "file": ONNX_FILE,
            "sha256": sha256_file(onnx_path),
            "bytes": onnx_path.stat().st_size,
            "opset": opset,
            "exporter": exporter,
        },
        "parity": {"max_abs_diff": diff, "top1_agreement": agreement, "samples": PARITY_SAMPLES},
    }
