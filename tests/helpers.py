"""Helpers the tests share: the CLI in a subprocess, a served repository (a real `maasctl serve` process, or the
real app under uvicorn in a thread), plain HTTP, /metrics parsed with prometheus-client's parser, and hand-built
ONNX models filed with a manifest. Fixtures live in conftest.py; test modules import from here, never from
each other."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from maasctl.repository import ModelRepository
from maasctl.serve.batching import BatchingConfig
from maasctl.serve.dataplane import DataPlane
from maasctl.serve.one_write import OneWriteHttpToolsProtocol
from maasctl.serve.rest import create_app

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


def start_server(repo: Path, *extra: str, ready: bool = True) -> Server:
    """`maasctl serve` in a subprocess, once ready (or, with `ready=False`, once live: a server that serves only
    some of its models never gets ready)."""
    port = free_port()
    if "--workers" not in extra:  # one process, whatever the machine's cores would choose
        extra = ("--workers", "1", *extra)
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
            with urllib.request.urlopen(url + ("/v2/health/ready" if ready else "/v2/health/live"), timeout=1) as r:
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


@contextlib.contextmanager
def serving(dataplane: DataPlane, **app_options: Any) -> Iterator[str]:
    """The real app in uvicorn on a loopback port, in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    app = create_app(dataplane, **app_options)
    config = uvicorn.Config(
        app, log_level="warning", ws="none", http=OneWriteHttpToolsProtocol
    )  # as in `maasctl serve`
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "uvicorn to start")
    assert thread.is_alive(), "uvicorn exited at start-up"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def infer(
    base: str, model: str, inputs: dict[str, np.ndarray], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A JSON infer request; returns status, headers and the document, with outputs turned into arrays."""
    doc = {
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()}
            for n, a in inputs.items()
        ]
    }
    status, reply_headers, body = http("POST", f"{base}/v2/models/{model}/infer", json.dumps(doc).encode(), headers)
    reply = json.loads(body)
    if status == 200:
        reply["arrays"] = {
            o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"]) for o in reply["outputs"]
        }
    return status, reply_headers, reply


def scrape(base: str, headers: dict[str, str] | None = None) -> dict[tuple[str, frozenset], float]:
    """GET /metrics, parsed with prometheus-client's own parser: {(sample name, labels): value}."""
    status, reply_headers, body = http("GET", base + "/metrics", headers=headers)
    assert status == 200, body
    assert reply_headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def metric(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


class Gate:
    """Holds a model's executions until opened; `entered` is set once one is being held."""

    def __init__(self, model: Any) -> None:
        self.open, self.entered = threading.Event(), threading.Event()
        run = model.run

        def gated(feeds, output_names=None):
            self.entered.set()
            assert self.open.wait(30), "gate never opened"
            return run(feeds, output_names)

        model.run = gated


def load_dataplane(repo: Path, **batching: Any) -> DataPlane:
    dataplane = DataPlane(ModelRepository(repo), "cpu", BatchingConfig(**batching))
    dataplane.load_all()
    assert dataplane.ready, dataplane.repository_index()
    return dataplane


def write_rowsum_model(repo: Path) -> None:
    """A model whose second input dimension is dynamic too: x FP32 [batch, n] -> total = x.sum(1) [batch, 1]."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1)],
        "rowsum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    file_onnx_model(
        repo,
        "rowsum",
        model,
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
        outputs=[{"name": "total", "datatype": "FP32", "shape": [-1, 1]}],
    )


def digits(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 1, 8, 8), dtype=np.float32)


# --- text: a tiny pretrained-style encoder, built offline ------------------------------------------------------------

INTENTS = {
    "billing": ["my invoice is wrong", "charge on my card twice", "refund the payment", "the bill is too high"],
    "tech": ["the app crashes on start", "cannot log in to my account", "error when I upload", "the page is blank"],
    "travel": ["book a flight to Paris", "change my hotel room", "cancel the train ticket", "seat on the plane"],
}


def intent_rows(copies: int = 12) -> list[dict[str, str]]:
    """Labelled short requests, each phrase repeated with small variations."""
    rows = []
    for k in range(copies):
        for label, phrases in INTENTS.items():
            for p in phrases:
                rows.append({"text": f"{p} please" if k % 2 else (p.capitalize() + "!" * (k % 3)), "label": label})
    return rows


def make_tiny_bert(folder: Path, texts: list[str], layers: int = 2, hidden: int = 32, positions: int = 64) -> Path:
    """A 2-layer BERT-style encoder with random weights and a WordPiece tokenizer trained on `texts`, written with
    save_pretrained as a downloaded model would be: config.json, model.safetensors, tokenizer.json."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=positions,
    )
    folder.mkdir(parents=True, exist_ok=True)
    BertModel(config).save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def system_tool(name: str) -> str:
    """The path of a system program (promtool, prometheus: Debian's `prometheus` package, which .ci/run installs).
    Missing: the test fails under CI (CI=true), where a skip would hide that the check never ran; skips elsewhere."""
    path = shutil.which(name)
    if path is None:
        why = f"{name} is not installed (apt-get install prometheus)"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(why)
        pytest.skip(why)
    return path


def file_adder(repo: Path, version: int, corrupt: bool = False) -> Path:
    """A model "adder" whose version v answers y = x + v (x FP32 [batch, 2]), filed as repo/adder/v; `corrupt`: its
    file no longer matches the manifest's sha256."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        "adder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(np.full((2,), version, dtype=np.float32), "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    # Staged and renamed into place, as export files a version: a polling server never sees half a version.
    staged = file_onnx_model(
        repo.parent / f".staging-{repo.name}-{version}",
        "adder",
        model,
        version=version,
        inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    )
    if corrupt:
        with open(staged / "model.onnx", "ab") as f:
            f.write(b"\0")  # the manifest's sha256 no longer matches
    folder = repo / "adder" / str(version)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staged.rename(folder)
    return folder


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def colour_images(
    root: Path, per_class: int, size: Callable[[int], tuple[int, int]], noise: int
) -> Iterator[tuple[Path, int, Image.Image]]:
    """An image folder of three classes, noisy solid colours: makes root/<colour>/ and yields (class folder, index,
    image) for the caller to save in its own formats. `size(i)`: (height, width) of image i; the seed is fixed."""
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(-noise, noise, (*size(i), 3))
            yield root / name, i, Image.fromarray(np.clip(np.array(rgb) + pixels, 0, 255).astype(np.uint8))
