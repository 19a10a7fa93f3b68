"""Shared fixtures: one tiny trained run and one exported model per test session, made with the real CLI; and the
`gpu` marker's skip rule. Helper functions are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TINY, run_cli, start_server, stop_server


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """A folder with artifacts/runs/digits (3 epochs) and artifacts/models/digits/1, made by train + export."""
    ws = tmp_path_factory.mktemp("ws")
    train = run_cli("train", *TINY, "--name", "digits", "--json", cwd=ws)
    export = run_cli("export", "digits", "--name", "digits", "--json", cwd=ws)
    (ws / "train.json").write_text(train.stdout)
    (ws / "export.json").write_text(export.stdout)
    return ws


@pytest.fixture(scope="session")
def model_repo(workspace) -> Path:
    return workspace / "artifacts" / "models"


@pytest.fixture(scope="session")
def server(model_repo):
    srv = start_server(model_repo)
    yield srv
    stop_server(srv)


def _why_no_cuda(runtime: str) -> str | None:
    """Why a `gpu(runtime)` test cannot run here; None when it can."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return None
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu in place of onnxruntime)"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "torch sees no CUDA device"


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.gpu` (torch CUDA) and `@pytest.mark.gpu("onnxruntime")` (onnxruntime's CUDA provider) tests
    skip cleanly without them. The check runs once per runtime, only when such tests were collected, so a run
    without them never imports torch for it. `python -m pytest -m gpu` runs them alone."""
    reasons: dict[str, str | None] = {}
    for item in items:
        marker = item.get_closest_marker("gpu")
        if marker is None:
            continue
        runtime = marker.args[0] if marker.args else "torch"
        if runtime not in reasons:
            reasons[runtime] = _why_no_cuda(runtime)
        if reasons[runtime]:
            item.add_marker(pytest.mark.skip(reason=f"gpu test: {reasons[runtime]}"))
