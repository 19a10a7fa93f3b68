"""The whole path as a user runs it: train → export → serve → predict (remote and local), in subprocesses."""

from __future__ import annotations

import json

import numpy as np
from helpers import run_cli, start_server, stop_server
from PIL import Image


def test_train_json_reports_run_and_metrics(workspace):
    out = json.loads((workspace / "train.json").read_text())
    run_dir = workspace / out["run_dir"]
    assert out["metrics"]["test_accuracy"] > 0.8  # 3 epochs on digits already beat chance by far
    for name in ("recipe.yaml", "metrics.csv", "summary.json", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,train_loss") and len(rows) == 1 + 3
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["metrics"]["test_accuracy"] == out["metrics"]["test_accuracy"]
    assert set(summary["samples"]) == {"train", "validation", "test"}


def test_export_files_a_version_with_manifest(workspace, model_repo):
    out = json.loads((workspace / "export.json").read_text())
    assert (out["name"], out["version"]) == ("digits", 1)
    assert out["max_abs_diff"] < 1e-4 and out["top1_agreement"] == 1.0
    manifest = json.loads((model_repo / "digits" / "1" / "model.json").read_text())
    assert manifest["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert manifest["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert manifest["labels"] == [str(d) for d in range(10)]
    assert manifest["preprocessing"]["kind"] == "image"
    assert manifest["metrics"]["test_accuracy"] > 0.8
    assert len(manifest["onnx"]["sha256"]) == 64


def _sample_files(workspace, tmp_path, n=6):
    """Held-out digits written as PNG and as .npy tensors."""
    from maasctl.data import build_dataset
    from maasctl.recipe import load_recipe

    data = build_dataset(load_recipe().data, seed=0)
    pngs = []
    for i in range(n):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(data.test.raw[i]).save(path)
        pngs.append(str(path))
    npy = tmp_path / "batch.npy"
    np.save(npy, data.test.x[:n])
    return pngs, str(npy), [str(y) for y in data.test.y[:n]]


def test_predict_remote_and_local_agree_then_server_stops_cleanly(workspace, model_repo, tmp_path):
    pngs, npy, truth = _sample_files(workspace, tmp_path)
    server = start_server(model_repo)
    try:
        remote = json.loads(run_cli("predict", "digits", *pngs, npy, "--url", server.url, "--json").stdout)
    finally:
        code, log = stop_server(server)
    local = json.loads(run_cli("predict", "digits", *pngs, npy, "--repo", str(model_repo), "--json").stdout)

    assert code == 0, log
    assert "version 1 ready on CPUExecutionProvider" in log  # the provider each model really runs on is logged
    labels = [p["label"] for p in remote["predictions"]]
    assert labels == [p["label"] for p in local["predictions"]]
    assert len(labels) == 2 * len(pngs)  # the .npy held a batch of the same digits
    assert labels[: len(pngs)] == labels[len(pngs) :]  # image files and tensors give the same answers
    assert sum(a == b for a, b in zip(labels, truth)) >= len(truth) - 1
    for p in local["predictions"]:
        assert set(p) >= {"input", "label", "probability"} and 0 < p["probability"] <= 1


def test_predict_model_folder_path_and_name_version(workspace, model_repo, tmp_path):
    pngs, _, _ = _sample_files(workspace, tmp_path, n=2)
    by_path = json.loads(run_cli("predict", str(model_repo / "digits" / "1"), *pngs, "--json").stdout)
    by_version = json.loads(run_cli("predict", "digits:1", *pngs, "--repo", str(model_repo), "--json").stdout)
    assert by_path["predictions"] == by_version["predictions"]


def test_predict_human_output_is_a_table(workspace, model_repo, tmp_path):
    pngs, _, _ = _sample_files(workspace, tmp_path, n=1)
    out = run_cli("predict", "digits", pngs[0], "--repo", str(model_repo)).stdout
    assert "digit0.png" in out and "probability" in out


def test_quickstart_runs_the_whole_path(tmp_path):
    proc = run_cli("quickstart", "--epochs", "2", "--samples", "3", cwd=tmp_path)
    assert "test accuracy:" in proc.stdout
    assert (tmp_path / "artifacts" / "models" / "digits-cnn" / "1" / "model.onnx").is_file()
    assert len(list((tmp_path / "artifacts" / "runs" / "digits-cnn" / "samples").glob("*.png"))) == 3
