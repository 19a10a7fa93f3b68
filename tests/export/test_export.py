"""Export: parity gate, nothing filed on failure, versions only added, tampered files refused."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from helpers import run_cli


def test_onnx_has_a_dynamic_batch_axis(model_repo):
    model = onnx.load(str(model_repo / "digits" / "1" / "model.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # symbolic, not frozen at the example's batch size
    assert [d.dim_value for d in dims[1:]] == [1, 8, 8]


def test_parity_failure_exits_1_and_files_nothing(workspace, tmp_path):
    shutil.copytree(workspace / "artifacts" / "runs", tmp_path / "artifacts" / "runs")
    proc = run_cli("export", "digits", "--atol", "1e-12", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert "parity failed" in proc.stderr and "nothing was filed" in proc.stderr
    models = tmp_path / "artifacts" / "models"
    assert not models.exists() or not any(p for p in models.rglob("*") if p.is_file())


def test_versions_increment_and_torchscript_exporter_works(workspace, tmp_path):
    shutil.copytree(workspace / "artifacts" / "runs", tmp_path / "artifacts" / "runs")
    first = json.loads(run_cli("export", "digits", "--json", cwd=tmp_path).stdout)
    second = json.loads(run_cli("export", "digits", "--exporter", "torchscript", "--json", cwd=tmp_path).stdout)
    assert (first["version"], second["version"]) == (1, 2)
    assert second["exporter"] == "torchscript" and second["max_abs_diff"] < 1e-4
    assert first["name"] == "digits-cnn"  # the recipe's name when --name is not given


def test_export_of_a_missing_run_is_a_usage_error(tmp_path):
    proc = run_cli("export", "nope", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "no run 'nope'" in proc.stderr


def test_run_without_checkpoint_is_refused(workspace, tmp_path):
    run = tmp_path / "artifacts" / "runs" / "digits"
    shutil.copytree(workspace / "artifacts" / "runs" / "digits", run)
    for ckpt in (run / "checkpoints").iterdir():
        ckpt.unlink()
    proc = run_cli("export", "digits", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "no checkpoint" in proc.stderr


def test_tampered_model_is_refused_by_predict(model_repo, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(model_repo, repo)
    onnx_file = repo / "digits" / "1" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-10])  # truncated
    sample = tmp_path / "x.json"
    sample.write_text(json.dumps([[[0.0] * 8] * 8]))
    proc = run_cli("predict", "digits", str(sample), "--repo", str(repo), check=False)
    assert proc.returncode == 3
    assert "does not match the manifest" in proc.stderr


def test_triton_config_sits_beside_the_versions(model_repo):
    config = (model_repo / "digits" / "config.pbtxt").read_text()
    assert 'name: "digits"' in config and 'platform: "onnxruntime_onnx"' in config
    assert "max_batch_size: 64" in config and "dynamic_batching" in config
    assert 'name: "input" data_type: TYPE_FP32 dims: [ 1, 8, 8 ]' in config  # batch axis left to Triton
    assert 'name: "logits" data_type: TYPE_FP32 dims: [ 10 ]' in config


def test_evaluate_onnx_matches_the_pytorch_test_accuracy(workspace, model_repo):
    out = json.loads(run_cli("evaluate", "digits", "--repo", str(model_repo), "--json").stdout)
    trained = json.loads((workspace / "train.json").read_text())["metrics"]
    assert out["split"] == "test" and out["samples"] == 269
    assert out["metrics"]["accuracy"] == trained["test_accuracy"]
    assert out["metrics"]["macro_f1"] == pytest.approx(trained["test_macro_f1"])
    assert sum(map(sum, out["metrics"]["confusion_matrix"])) == 269
    bad = run_cli("evaluate", "digits", "--split", "holdout", "--repo", str(model_repo), check=False)
    assert bad.returncode == 2 and "--split 'holdout'" in bad.stderr


def test_models_lists_registry_and_repository(model_repo):
    registry = run_cli("models").stdout
    assert "cnn_small" in registry and "mlp" in registry
    listing = json.loads(run_cli("models", "list", "--repo", str(model_repo), "--json").stdout)
    assert [(m["name"], m["version"]) for m in listing["models"]] == [("digits", 1)]
    assert listing["models"][0]["bytes"] == (model_repo / "digits" / "1" / "model.onnx").stat().st_size


def test_unsupported_opset_is_a_usage_error(workspace, tmp_path):
    shutil.copytree(workspace / "artifacts" / "runs", tmp_path / "artifacts" / "runs")
    proc = run_cli("export", "digits", "--opset", "99", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "--opset 99: choose 13..23" in proc.stderr
    assert not (tmp_path / "artifacts" / "models").exists()


def test_checkpoint_from_another_recipe_is_refused(workspace, tmp_path):
    run = tmp_path / "artifacts" / "runs" / "digits"
    shutil.copytree(workspace / "artifacts" / "runs" / "digits", run)
    recipe = run / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("name: cnn_small", "name: mlp"))
    proc = run_cli("export", "digits", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "the checkpoint comes from another recipe" in proc.stderr
    models = tmp_path / "artifacts" / "models"
    assert not models.exists() or not any(p.is_file() for p in models.rglob("*"))
