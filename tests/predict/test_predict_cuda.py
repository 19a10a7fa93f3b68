"""`maasctl predict --device cuda|auto` on onnxruntime's CUDA provider: the same labels as on the CPU. Marked
`gpu("onnxruntime")`: runs where onnxruntime-gpu is installed and sees a device (`python -m pytest -m gpu`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import run_cli

pytestmark = pytest.mark.gpu("onnxruntime")


def test_predict_on_cuda_gives_the_cpu_labels(workspace, model_repo, tmp_path):
    from maasctl.data import build_dataset
    from maasctl.recipe import load_recipe

    np.save(tmp_path / "batch.npy", build_dataset(load_recipe().data, seed=0).test.x[:64])
    runs = {}
    for device in ("cpu", "cuda", "auto"):
        proc = run_cli(
            "predict", "digits", "batch.npy", "--repo", str(model_repo), "--device", device, "--json", cwd=tmp_path
        )
        runs[device] = json.loads(proc.stdout)
    assert runs["cpu"]["summary"]["target"] == "local (CPUExecutionProvider)"
    assert runs["cuda"]["summary"]["target"] == "local (CUDAExecutionProvider)"
    assert runs["auto"]["summary"]["target"] == "local (CUDAExecutionProvider)"  # auto prefers CUDA when present
    for device in ("cuda", "auto"):
        assert runs[device]["summary"]["predicted"] == 64
        assert [p["index"] for p in runs[device]["predictions"]] == [p["index"] for p in runs["cpu"]["predictions"]]
        np.testing.assert_allclose(
            [p["probability"] for p in runs[device]["predictions"]],
            [p["probability"] for p in runs["cpu"]["predictions"]],
            atol=1e-3,
        )
