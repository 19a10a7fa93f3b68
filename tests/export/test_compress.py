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
    pred = run_cli("predict", "q", "batch.npy", "--repo", "artifacts/models", "--json", cwd=ws)
    assert '"label"' in pred.stdout or "label" in pred.stdout

    # an honest refusal: the int8 model here differs from fp32 on some test samples only if its accuracy dropped
    if c["accuracy_drop"] > 0:
        refused = run_cli(
            "export",
            "digits",
            "--name",
            "q",
            "--quantize",
            "int8",
            "--exporter",
            "torchscript",
            "--max-accuracy-drop",
            "0",
            cwd=ws,
            check=False,
        )
        assert refused.returncode == 1, refused.stderr
        assert "compression refused" in refused.stderr
        assert sorted(p.name for p in (ws / "artifacts" / "models" / "q").iterdir() if p.is_dir()) == ["1"]


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
