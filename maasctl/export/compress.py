"""`maasctl export --quantize int8 | --fp16`: compress the parity-checked fp32 ONNX model, measure both, gate.

int8: static QDQ quantization (activations calibrated on samples of the recipe's training split) for image
CNNs; dynamic quantization (weights int8, activations quantized at run time) for MLP, RNN and Transformer
models, whose activation ranges vary too much per input for one static scale. fp16: onnxruntime's own float16
converter (onnxruntime.transformers.float16), with float32 inputs and outputs kept, so the manifest's contract
and every client stay unchanged.

Both models are scored by onnxruntime on the recipe's test split; the compressed one is refused when its
accuracy falls more than the allowed drop below the fp32 one (unless forced).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from maasctl.errors import CheckFailed, UsageError

METHODS = ("int8", "fp16")
CALIBRATION_SAMPLES = 256
CALIBRATION_BATCH = 32
DYNAMIC_MODELS = ("mlp", "lstm", "gru", "transformer")
LATENCY_BATCHES = (1, 32)


def int8_mode(meta: dict[str, Any]) -> str:
    """`static` (QDQ, calibrated) for image CNNs, `dynamic` for MLP / sequence / token models."""
    kind = meta.get("input_kind", "image")
    name = str(meta.get("model_name", "")).lower()
    if kind in ("features", "sequence", "tokens", "subword") or any(m in name for m in DYNAMIC_MODELS):
        return "dynamic"
    return "static"


def check_accuracy_drop(fp32_accuracy: float, compressed_accuracy: float, max_drop: float, force: bool) -> float:
    """Raise CheckFailed when the compressed model loses more than `max_drop` accuracy (a fraction: 0.01 = one
    point), unless `force`. Returns the drop (negative when the compressed model scores higher)."""
    drop = fp32_accuracy - compressed_accuracy
    if drop > max_drop + 1e-12 and not force:
        raise CheckFailed(
            f"compression refused: test accuracy {compressed_accuracy:.2%} vs fp32 {fp32_accuracy:.2%} "
            f"(drop {drop * 100:.2f} points > --max-accuracy-drop {max_drop * 100:.2f} points); nothing was filed. "
            "Raise --max-accuracy-drop, or --force to file it anyway."
        )
    return drop


def compress_onnx(
    fp32_path: Path,
    out_path: Path,
    method: str,
    meta: dict[str, Any],
    calibration: np.ndarray,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Write the compressed model to `out_path`; returns {method, mode} describing what was done."""
    if method not in METHODS:
        raise UsageError(f"compression {method!r}: use one of {', '.join(METHODS)}")
    with tempfile.TemporaryDirectory(prefix="maasctl-compress-") as tmp, _quiet():
        if method == "fp16":
            return _fp16(fp32_path, out_path)
        mode = int8_mode(meta)
        source = Path(tmp) / "pre.onnx"
        try:  # symbolic shape inference + ORT optimisations that make more of the graph quantizable
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(fp32_path), str(source), skip_symbolic_shape=mode == "static")
            preprocessed = True
        except Exception as exc:
            log(f"quantization preprocessing skipped ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
            shutil.copyfile(fp32_path, source)
            preprocessed = False
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

        if mode == "static":
            quantize_static(
                str(source),
                str(out_path),
                _Calibration(calibration),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
            info = {"method": "int8", "mode": "static", "format": "QDQ", "calibration_samples": len(calibration)}
        else:
            quantize_dynamic(str(source), str(out_path), weight_type=QuantType.QInt8)
            info = {"method": "int8", "mode": "dynamic"}
        info["preprocessed"] = preprocessed
        return info


def _fp16(fp32_path: Path, out_path: Path) -> dict[str, Any]:
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # onnxruntime builds without the transformers tools
        raise UsageError(
            f"--fp16 needs onnxruntime.transformers.float16, which this onnxruntime lacks ({exc})"
        ) from None
    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    _toposort(model.graph)  # the converter appends its input Casts after their consumers; onnx.checker refuses that
    onnx.save(model, str(out_path))
    return {"method": "fp16", "mode": "float16 weights and compute, float32 inputs and outputs"}


def _toposort(graph: Any) -> None:
    """Reorder the graph's nodes so each comes after the producers of its inputs (stable otherwise)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:  # a cycle or an input from an outer scope: leave the rest in their order
            ordered.extend(pending)
            break
        for n in ready:
            available.update(n.output)
            ordered.append(n)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


class _Calibration:
    """onnxruntime CalibrationDataReader over training samples, in batches."""

    def __init__(self, x: np.ndarray) -> None:
        self._batches = iter(
            [{"input": np.ascontiguousarray(x[i : i + CALIBRATION_BATCH])} for i in range(0, len(x), CALIBRATION_BATCH)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        pass


def measure(onnx_path: Path, x: np.ndarray, y: np.ndarray, repeats: int = 30, batch_size: int = 256) -> dict[str, Any]:
    """Test accuracy, file size and CPU latency (median ms of `repeats` runs after warm-up) at batch 1 and 32."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    from maasctl.export.text_export import session_feeds

    logits = np.concatenate(
        [
            session.run(["logits"], session_feeds(session, x[i : i + batch_size]))[0]
            for i in range(0, len(x), batch_size)
        ]
    )
    predictions = logits.argmax(1)
    result: dict[str, Any] = {"accuracy": float((predictions == y).mean()), "bytes": onnx_path.stat().st_size}
    for b in LATENCY_BATCHES:
        batch = np.ascontiguousarray(np.resize(x, (b, *x.shape[1:])) if len(x) < b else x[:b])
        feeds = session_feeds(session, batch)
        result[f"latency_ms_b{b}"] = latency_ms(lambda: session.run(["logits"], feeds), repeats)  # noqa: B023 (timed here)
    result["_predictions"] = predictions
    return result


def latency_ms(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return float(statistics.median(times))


@contextlib.contextmanager
def _quiet():
    """The quantization tools log and warn freely; keep stdout for --json and stderr readable."""
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.getLogger().setLevel(level)


def describe(report: dict[str, Any]) -> list[str]:
    """Log lines: fp32 beside the compressed model."""
    fp, cp = report["fp32"], report["compressed"]
    label = report["method"] + (f" ({report['mode']})" if report["method"] == "int8" else "")
    lines = []
    for name, m in (("fp32", fp), (label, cp)):
        lines.append(
            f"{name:>16}: test accuracy {m['accuracy']:.2%}, {m['bytes'] / 1024:.1f} KiB, "
            f"latency {m['latency_ms_b1']:.3f} ms (batch 1), {m['latency_ms_b32']:.3f} ms (batch 32)"
        )
    lines.append(
        f"{'compressed/fp32':>16}: size {cp['bytes'] / fp['bytes']:.2f}x, latency {cp['latency_ms_b1'] / fp['latency_ms_b1']:.2f}x (batch 1), "
        f"{cp['latency_ms_b32'] / fp['latency_ms_b32']:.2f}x (batch 32), top-1 agreement with fp32 {report['top1_agreement']:.2%}"
    )
    return lines


def compress_and_measure(
    fp32_path: Path,
    out_path: Path,
    method: str,
    meta: dict[str, Any],
    data: Any,
    *,
    max_accuracy_drop: float,
    force: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Compress, score both on the test split, log, gate. Returns the report recorded in manifest and --json."""
    calibration = np.ascontiguousarray(data.train.x[:CALIBRATION_SAMPLES])
    info = compress_onnx(fp32_path, out_path, method, meta, calibration, log)
    with _quiet():
        fp = measure(fp32_path, data.test.x, data.test.y)
        cp = measure(out_path, data.test.x, data.test.y)
    from maasctl.metrics import classification_metrics

    fp_pred, cp_pred = fp.pop("_predictions"), cp.pop("_predictions")
    agreement = float((fp_pred == cp_pred).mean())
    report = {
        **info,
        "fp32": fp,
        "compressed": cp,
        "test_samples": len(data.test.y),
        "top1_agreement": agreement,
        "max_accuracy_drop": max_accuracy_drop,
        "forced": bool(force),
        "cpu_count": os.cpu_count(),
        # the manifest's `metrics` become the compressed model's own (onnxruntime, test split)
        "_metrics": classification_metrics(data.test.y, cp_pred, data.num_classes),
    }
    for line in describe(report):
        log(line)
    report["accuracy_drop"] = check_accuracy_drop(fp["accuracy"], cp["accuracy"], max_accuracy_drop, force)
    if report["accuracy_drop"] > max_accuracy_drop:
        log(
            f"warning: accuracy drop {report['accuracy_drop'] * 100:.2f} points exceeds the allowed {max_accuracy_drop * 100:.2f}; filed anyway (--force)"
        )
    return report
