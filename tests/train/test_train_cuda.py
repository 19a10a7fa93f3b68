"""The CUDA paths of training: auto speed settings (AMP, channels_last), fp16 with its gradient scaler checkpointed
and restored, data placement on the device or in pinned host memory. Marked `gpu`: they run on a machine where
torch sees a CUDA device (`python -m pytest -m gpu`) and skip elsewhere."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from helpers import run_cli

pytestmark = pytest.mark.gpu

CUDA = ["--set", "train.device=cuda"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_auto_on_cuda_means_amp_channels_last_and_data_on_the_device(tmp_path):
    out = json.loads(run_cli("train", *CUDA, "--set", "train.epochs=3", "--name", "g", "--json", cwd=tmp_path).stdout)
    run_dir = tmp_path / out["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["device"].startswith("cuda")
    assert summary["amp"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert summary["channels_last"] is True and summary["compile"] is False
    assert summary["data_placement"] == {"train": "device", "validation": "device", "test": "device"}
    assert out["metrics"]["test_accuracy"] > 0.8
    # the checkpoint holds plain fp32 weights on the CPU, whatever the run used; export takes it as any other
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    floats = [t for t in ckpt["model"].values() if t.is_floating_point()]
    assert floats and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in floats)
    run_cli("export", "g", "--name", "g", "--exporter", "torchscript", cwd=tmp_path)
    assert (tmp_path / "artifacts" / "models" / "g" / "1" / "model.onnx").is_file()


def test_trainer_places_model_and_inputs_on_cuda_in_channels_last_under_autocast():
    from maasctl.recipe import load_recipe
    from maasctl.train.trainer import Trainer

    trainer = Trainer(load_recipe(None, ["train.device=cuda"]))
    try:
        assert trainer.device.type == "cuda"
        # (a tensor with one channel is both layouts at once, so look at those with several)
        conv = next(p for p in trainer.model.parameters() if p.dim() == 4 and p.shape[1] > 1)
        assert conv.device.type == "cuda" and conv.is_contiguous(memory_format=torch.channels_last)
        assert not conv.is_contiguous()
        wide = trainer.accel.input(torch.rand(16, 3, 8, 8, device=trainer.device))
        assert wide.is_contiguous(memory_format=torch.channels_last) and not wide.is_contiguous()
        x = trainer.accel.input(torch.rand(16, 1, 8, 8, device=trainer.device))
        with trainer.accel.autocast():
            logits = trainer.model(x)
        assert logits.dtype == (torch.bfloat16 if trainer.accel.amp == "bf16" else torch.float16)
        assert trainer.scaler.is_enabled() == (trainer.accel.amp == "fp16")
    finally:
        trainer.close()


def test_fp16_checkpoints_the_grad_scaler_and_resume_restores_it(tmp_path):
    fp16 = [*CUDA, "--set", "train.amp=fp16"]
    run_cli("train", *fp16, "--set", "train.epochs=2", "--name", "h", cwd=tmp_path)
    run_dir = tmp_path / "artifacts" / "runs" / "h"
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["scaler"] is not None and ckpt["scaler"]["scale"] > 0  # GradScaler state, saved for resume
    assert json.loads((run_dir / "summary.json").read_text())["amp"] == "fp16"

    out = json.loads(run_cli("train", "--resume", "h", "--set", "train.epochs=4", "--json", cwd=tmp_path).stdout)
    rows = _rows(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)  # scaled fp16 gradients never went inf/NaN
    assert float(rows[3]["train_loss"]) < float(rows[0]["train_loss"])
    assert out["metrics"]["test_accuracy"] > 0.8
    resumed = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["epoch"] == 4 and resumed["scaler"]["scale"] > 0


def test_host_placement_on_cuda_feeds_batches_from_pinned_memory(tmp_path):
    args = [*CUDA, "--set", "train.epochs=3", "--set", "train.data_placement=host", "--json"]
    out = json.loads(run_cli("train", *args, cwd=tmp_path).stdout)
    summary = json.loads((tmp_path / out["run_dir"] / "summary.json").read_text())
    assert summary["data_placement"] == {"train": "host", "validation": "host", "test": "host"}
    assert "in pinned host memory" in summary["data_placement_note"]
    assert out["metrics"]["test_accuracy"] > 0.8
