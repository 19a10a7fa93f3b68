"""Shared fixtures: one tiny trained run and one exported model per test session, made with the real CLI.
Helper functions are in helpers.py."""

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
