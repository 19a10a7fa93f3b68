"""`maasctl export --quantize int8 | --fp16`: the compressed model is measured beside fp32, gated, filed, served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, run_cli

from maasctl.errors import CheckFailed
from maasctl.export.compress import check_accuracy_drop, int8_mode


@pytest.fixture(scope="module")
def ws(workspace, tmp_path_factory) -> Path:
    """A private copy of the session's trained digits run (no models yet)."""
    root = tmp_path_factory.mktemp("compress")
    shutil.copytree(workspace / "artifacts" / "runs", root / "artifacts" / "runs")
    return root


def test_int8_static_cnn_is_measured_filed_and_predicts(ws):
    proc = run_cli(
        "export", "digits", "--name", "q", "--quantize", "int8", "--exporter", "torchscript", "--json", cwd=ws
    )
    out = json.loads(proc.stdout)
    c = out["compression"]
    assert (c["method"], c["mode"], c["format"]) == ("int8", "static", "QDQ")
    assert c["fp32"]["accuracy"] - c["compressed"]["accuracy"] <= 0.01
    assert c["compressed"]["bytes"] < 0.5 * c["fp32"]["bytes"]
    for side in ("fp32", "compressed"):
        assert set(c[side]) == {"accuracy", "bytes", "latency_ms_b1", "latency_ms_b32"}
        assert c[side]["latency_ms_b1"] > 0 and c[side]["latency_ms_b32"] > 0
    assert "int8 (static)" in proc.stderr and "fp32:" in proc.stderr

    model_dir = ws / "artifacts" / "models" / "q" / "1"
    manifest = json.loads((model_dir / "model.json").read_text())
    assert manifest["compression"]["method"] == "int8"
    assert manifest["compression"]["fp32"]["accuracy"] == c["fp32"]["accuracy"]
    assert manifest["metrics"]["accuracy"] == c["compressed"]["accuracy"]  # the filed model's own score
    assert manifest["onnx"]["bytes"] == (model_dir / "model.onnx").stat().st_size == c["compressed"]["bytes"]
    assert manifest["parity"]["top1_agreement"] == 1.0  # the fp32 gate ran first
    # QDQ nodes really are in the filed graph
    import onnx

    ops = {n.op_type for n in onnx.load(str(model_dir / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops

    # evaluate (onnxruntime, test split) agrees with what export recorded; predict serves it
    ev = json.loads(run_cli("evaluate", "q", "--repo", "artifacts/models", "--json", cwd=ws).stdout)
    assert ev["metrics"]["accuracy"] == pytest.approx(c["compressed"]["accuracy"])
    from maasctl.data import build_dataset
    from maasctl.recipe import Recipe

    recipe = Recipe.model_validate(manifest["recipe"])
    test = build_dataset(recipe.data, recipe.train.seed).test
    np.save(ws / "batch.npy", test.x[:32])
    pred = json.loads(run_cli("predict", "q", "batch.npy", "--repo", "artifacts/models", "--json", cwd=ws).stdout)
    assert pred["summary"]["predicted"] == 32 and pred["errors"] == []
    assert [p["input"] for p in pred["predictions"]] == [f"batch.npy[{i}]" for i in range(32)]
    # the labels are the filed int8 model's own answers, read straight from an onnxruntime session
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    scores = session.run(None, {session.get_inputs()[0].name: test.x[:32]})[0]
    assert [p["index"] for p in pred["predictions"]] == scores.argmax(1).tolist()
    assert [p["label"] for p in pred["predictions"]] == [manifest["labels"][i] for i in scores.argmax(1)]


def test_accuracy_gate():
    assert check_accuracy_drop(0.95, 0.945, 0.01, force=False) == pytest.approx(0.005)
    assert check_accuracy_drop(0.95, 0.96, 0.0, force=False) < 0  # better is never refused
    assert check_accuracy_drop(0.95, 0.94, 0.01, force=False) == pytest.approx(0.01)  # exactly the bound passes
    with pytest.raises(CheckFailed, match="compression refused") as err:
        check_accuracy_drop(0.95, 0.93, 0.01, force=False)
    assert err.value.exit_code == 1
    assert check_accuracy_drop(0.95, 0.93, 0.01, force=True) == pytest.approx(0.02)


def test_int8_mode_by_family():
    assert int8_mode({"input_kind": "image", "model_name": "cnn_small"}) == "static"
    assert int8_mode({"input_kind": "image", "model_name": "resnet18"}) == "static"
    assert int8_mode({"input_kind": "image", "model_name": "mlp"}) == "dynamic"
    assert int8_mode({"input_kind": "features", "model_name": "mlp"}) == "dynamic"
    assert int8_mode({"input_kind": "tokens", "model_name": "transformer"}) == "dynamic"
    assert int8_mode({"input_kind": "sequence", "model_name": "lstm"}) == "dynamic"


def test_int8_dynamic_mlp_and_usage_errors(tmp_path):
    run_cli("train", str(ROOT / "recipes" / "digits_mlp.yaml"), "--set", "train.epochs=3", "--json", cwd=tmp_path)
    out = json.loads(
        run_cli(
            "export", "digits-mlp", "--quantize", "int8", "--exporter", "torchscript", "--json", cwd=tmp_path
        ).stdout
    )
    c = out["compression"]
    assert (c["method"], c["mode"]) == ("int8", "dynamic")
    assert c["fp32"]["accuracy"] - c["compressed"]["accuracy"] <= 0.01
    assert c["compressed"]["bytes"] < c["fp32"]["bytes"]
    manifest = json.loads((tmp_path / "artifacts" / "models" / "digits-mlp" / "1" / "model.json").read_text())
    assert manifest["compression"]["mode"] == "dynamic"

    bad = run_cli("export", "digits-mlp", "--quantize", "int4", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "int8" in bad.stderr


def _sabotage_for_int8(checkpoint: Path) -> None:
    """Make a depth-1 MLP lose everything to per-tensor int8 while fp32 stays exact: hidden unit 0 is switched off
    (zero weights, bias -1, so ReLU always gives 0) and its outgoing weights set to 1e4. In fp32 they multiply 0; in
    int8 they set the output layer's one weight scale to 1e4 / 127, which rounds every other weight to 0, so every
    input gets the same logits (the bias)."""
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = ckpt["model"]
    state["1.weight"][0] = 0.0
    state["1.bias"][0] = -1.0
    state["4.weight"][:, 0] = 1e4
    torch.save(ckpt, checkpoint)


@pytest.fixture(scope="module")
def int8_breaking_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("int8-breaks")
    run_cli(
        "train",
        str(ROOT / "recipes" / "digits_mlp.yaml"),
        *("--set", "train.epochs=3", "--set", "model.params.depth=1", "--name", "mlp1"),
        cwd=root,
    )
    _sabotage_for_int8(root / "artifacts" / "runs" / "mlp1" / "checkpoints" / "best.pt")
    return root


def test_int8_refused_when_accuracy_drops_then_filed_with_force(int8_breaking_run):
    ws = int8_breaking_run
    args = ("export", "mlp1", "--name", "mlp1", "--quantize", "int8", "--exporter", "torchscript")
    refused = run_cli(*args, cwd=ws, check=False)
    assert refused.returncode == 1, refused.stderr
    assert "compression refused: test accuracy" in refused.stderr
    assert "Raise --max-accuracy-drop, or --force to file it anyway." in refused.stderr
    assert "Traceback" not in refused.stderr
    models = ws / "artifacts" / "models"
    assert not (models / "mlp1").exists()  # nothing filed, not even the model's folder

    # --force files it anyway, says so, and records the drop it accepted
    forced = run_cli(*args, "--force", "--json", cwd=ws)
    c = json.loads(forced.stdout)["compression"]
    assert c["forced"] is True and c["max_accuracy_drop"] == 0.01
    assert c["fp32"]["accuracy"] > 0.8 and c["compressed"]["accuracy"] < 0.5
    assert c["accuracy_drop"] == pytest.approx(c["fp32"]["accuracy"] - c["compressed"]["accuracy"])
    assert "exceeds the allowed 1.00; filed anyway (--force)" in forced.stderr
    manifest = json.loads((models / "mlp1" / "1" / "model.json").read_text())
    assert manifest["compression"]["forced"] is True
    assert manifest["metrics"]["accuracy"] == c["compressed"]["accuracy"]  # the filed (bad) model's own score


def test_fp16_export_is_filed_with_float32_io_and_predicts(ws):
    proc = run_cli("export", "digits", "--name", "h", "--fp16", "--exporter", "torchscript", "--json", cwd=ws)
    c = json.loads(proc.stdout)["compression"]
    assert c["method"] == "fp16" and c["forced"] is False
    assert c["fp32"]["accuracy"] - c["compressed"]["accuracy"] <= 0.01
    assert 0.4 * c["fp32"]["bytes"] < c["compressed"]["bytes"] < 0.6 * c["fp32"]["bytes"]  # half-size weights
    assert "fp16:" in proc.stderr

    model_dir = ws / "artifacts" / "models" / "h" / "1"
    manifest = json.loads((model_dir / "model.json").read_text())
    assert manifest["compression"]["method"] == "fp16"
    assert [i["datatype"] for i in manifest["inputs"]] == ["FP32"]  # the contract clients see is unchanged
    assert [o["datatype"] for o in manifest["outputs"]] == ["FP32"]
    import onnx

    graph = onnx.load(str(model_dir / "model.onnx")).graph
    assert {t.data_type for t in graph.initializer if t.dims} == {onnx.TensorProto.FLOAT16}
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    from maasctl.data import build_dataset
    from maasctl.recipe import Recipe

    recipe = Recipe.model_validate(manifest["recipe"])
    test = build_dataset(recipe.data, recipe.train.seed).test
    np.save(ws / "fp16-batch.npy", test.x[:64])
    pred = json.loads(run_cli("predict", "h", "fp16-batch.npy", "--repo", "artifacts/models", "--json", cwd=ws).stdout)
    assert pred["summary"]["predicted"] == 64 and pred["errors"] == []
    correct = sum(p["index"] == int(y) for p, y in zip(pred["predictions"], test.y[:64]))
    assert correct >= 0.8 * 64
