"""Shared fixtures: one tiny trained run and one exported model per test session, made with the real CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "train.epochs=3"]


def run_cli(
    *args: str, cwd: Path | None = None, check: bool = True, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `maasctl ARGS` in a subprocess, as a user or a CI script would."""
    proc = subprocess.run(
        [sys.executable, "-m", "maasctl", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"maasctl {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def file_onnx_model(repo: Path, name: str, model, version: int = 1, **manifest) -> Path:
    """Check a hand-built ONNX model and file it as `repo/name/version` with a manifest serve and predict accept;
    `manifest` gives inputs, outputs and any other keys."""
    import onnx

    from maasctl.fileio import sha256_file
    from maasctl.repository import MANIFEST, MANIFEST_FORMAT, ONNX_FILE

    onnx.checker.check_model(model, full_check=True)
    folder = repo / name / str(version)
    folder.mkdir(parents=True)
    onnx.save(model, folder / ONNX_FILE)
    doc = {"format": MANIFEST_FORMAT, "labels": [], "preprocessing": {}, **manifest}
    doc["onnx"] = {"file": ONNX_FILE, "sha256": sha256_file(folder / ONNX_FILE)}
    (folder / MANIFEST).write_text(json.dumps(doc), encoding="utf-8")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class Server:
    def __init__(self, proc: subprocess.Popen, url: str) -> None:
        self.proc, self.url = proc, url

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def post(self, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=body, method="POST", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


def start_server(repo: Path, *extra: str) -> Server:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "maasctl", "serve", "--repo", str(repo), "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return Server(proc, url)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not become ready within 60 s")


def stop_server(server: Server, timeout: float = 30) -> tuple[int, str]:
    """SIGTERM, as an orchestrator would; returns (exit code, log)."""
    server.proc.terminate()
    try:
        out, _ = server.proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        out, _ = server.proc.communicate()
    return server.proc.returncode, out


@pytest.fixture(scope="session")
def server(model_repo):
    srv = start_server(model_repo)
    yield srv
    stop_server(srv)
