"""Export of subword text models: pretrained encoders take several named inputs (input_ids, attention_mask and,
where the model has them, token_type_ids), with dynamic batch and sequence axes; the tokenizer is filed beside
model.onnx. Hooked into onnx_export.py (exporting, parity, filing) and compress.py (feeds)."""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maasctl.fileio import atomic_write_text, sha256_file
from maasctl.preprocess import packed_feeds

TOKENIZER_FILE = "tokenizer.json"


def session_feeds(session: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """Feeds for an onnxruntime session: a single-input model takes `x` as it is."""
    names = [i.name for i in session.get_inputs()]
    return packed_feeds(x, names) if names != ["input"] and x.ndim == 3 else {names[0]: x}


def export(model: torch.nn.Module, samples: np.ndarray, path: Path, opset: int) -> None:
    """TorchScript export (torch.export does not trace every Hugging Face model) with dynamic batch and sequence."""
    names = model.input_names
    feeds = packed_feeds(samples[:2], names)
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            path,
            dynamo=False,
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            external_data=False,
        )


def parity(model: torch.nn.Module, onnx_path: Path, samples: np.ndarray) -> tuple[float, float, float]:
    """Max |onnx - torch|, top-1 agreement and logit scale at two sequence lengths (the batch's longest text and
    half of it) and two batch sizes (all samples, and one at a time for the first 8)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = model.input_names
    longest = max(2, int(samples[:, 2].sum(1).max()))
    diff, agreement, scale = 0.0, 1.0, 1.0
    with torch.no_grad():
        for length in sorted({longest, max(2, longest // 2)}):
            feeds = packed_feeds(samples, names, length)
            expected = model(**{n: torch.from_numpy(v) for n, v in feeds.items()}).numpy()
            batched = session.run(["logits"], feeds)[0]
            single = np.concatenate(
                [
                    session.run(["logits"], {n: v[i : i + 1] for n, v in feeds.items()})[0]
                    for i in range(min(8, len(samples)))
                ]
            )
            diff = max(
                diff, float(np.abs(batched - expected).max()), float(np.abs(single - expected[: len(single)]).max())
            )
            agreement = min(agreement, float((batched.argmax(1) == expected.argmax(1)).mean()))
            scale = max(scale, float(np.abs(expected).max()))
    return diff, agreement, scale


def file_tokenizer(staged: Path, manifest: dict[str, Any]) -> None:
    """Write the tokenizer beside model.onnx; the manifest keeps its name and sha256 (checked at load, as the ONNX
    file is) instead of the inline text, and lists the graph's inputs."""
    spec = dict(manifest["preprocessing"])
    path = staged / TOKENIZER_FILE
    atomic_write_text(path, spec.pop("tokenizer_json"))
    spec["tokenizer"] = {"file": TOKENIZER_FILE, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest["preprocessing"] = spec
    if spec["inputs"] != ["input"]:
        manifest["inputs"] = [{"name": n, "datatype": "INT64", "shape": [-1, -1]} for n in spec["inputs"]]
