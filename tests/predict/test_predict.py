"""`maasctl predict` as a CI script uses it: every input kind, local and remote, output formats read back,
exit codes, gating, bad inputs. Subprocesses where the process boundary matters (exit codes, stdin, a
terminal, a server); the command's `main(argv)` in-process elsewhere, to keep the file fast."""

from __future__ import annotations

import csv
import http.server
import io
import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnxruntime as ort
import pytest
from helpers import free_port, start_server, stop_server
from PIL import Image

from maasctl.errors import UsageError
from maasctl.predict.command import main as predict_main

N = 6  # held-out digits used throughout


@pytest.fixture(scope="module")
def digits(model_repo):
    """Held-out digits (normalised tensors, raw pixels) and what onnxruntime itself says about them."""
    from maasctl.data import build_dataset
    from maasctl.recipe import load_recipe

    test = build_dataset(load_recipe().data, seed=0).test
    x, raw = test.x[:N].astype(np.float32), test.raw[:N]
    session = ort.InferenceSession(str(model_repo / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x})[0].astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labels = [str(i) for i in probs.argmax(1)]
    return {"x": x, "raw": raw, "labels": labels, "probs": probs.max(1)}


@pytest.fixture(scope="module")
def kinds(tmp_path_factory, digits):
    """One folder with every input kind; `expected` maps each input name the CLI should print to a digit index."""
    root = tmp_path_factory.mktemp("kinds")
    x, raw, labels = digits["x"], digits["raw"], digits["labels"]
    expected = {}
    for i in range(N):  # images in folders named after onnxruntime's label: a labelled layout
        path = root / "images" / labels[i] / f"digit{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(raw[i]).save(path)
        expected[f"images/{labels[i]}/digit{i}.png"] = i
    np.save(root / "single.npy", x[0])
    expected["single.npy"] = 0
    np.save(root / "batch.npy", x)
    expected.update({f"batch.npy[{i}]": i for i in range(N)})
    np.savez(root / "xy.npz", x=x[:3], y=np.arange(3))  # the array named x
    expected.update({f"xy.npz[{i}]": i for i in range(3)})
    np.savez(root / "only.npz", digits=x[:2])  # the only array
    expected.update({f"only.npz[{i}]": i for i in range(2)})
    (root / "nested.json").write_text(json.dumps(x[0].tolist()))
    expected["nested.json"] = 0
    (root / "data.json").write_text(json.dumps({"data": x[:2].tolist()}))
    expected.update({f"data.json[{i}]": i for i in range(2)})
    body = {"inputs": [{"name": "input", "shape": [3, 1, 8, 8], "datatype": "FP32", "data": x[:3].ravel().tolist()}]}
    (root / "request.json").write_text(json.dumps(body))
    expected.update({f"request.json[{i}]": i for i in range(3)})
    args = ["images", "*.npy", "xy.npz", "only.npz", "nested.json", "data.json", "request.json"]
    return root, args, expected


def cli(
    *args: str, cwd: Path | None = None, stdin: bytes | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """The real `maasctl predict` in a subprocess; text output, any exit code."""
    proc = subprocess.run(
        [sys.executable, "-m", "maasctl", "predict", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    return proc


def run(capsys, *args: str) -> tuple[int, str, str]:
    """The same command in-process (no interpreter start-up): (exit code, stdout, stderr)."""
    code = predict_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_matches_onnxruntime(doc: dict, expected: dict, digits: dict) -> None:
    got = {p["input"]: p for p in doc["predictions"]}
    assert set(got) == set(expected)
    for name, i in expected.items():
        assert got[name]["label"] == digits["labels"][i], name
        assert got[name]["probability"] == pytest.approx(digits["probs"][i], abs=1e-5), name


# --- inputs -------------------------------------------------------------------------------------------


def test_every_input_kind_locally_matches_onnxruntime(kinds, digits, model_repo):
    root, args, expected = kinds
    proc = cli("digits", *args, "--repo", str(model_repo), "--json", cwd=root)  # "*.npy" quoted: expanded by predict
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert_matches_onnxruntime(doc, expected, digits)
    assert doc["errors"] == [] and doc["summary"]["predicted"] == len(expected)


def test_every_input_kind_through_the_server_matches_local(kinds, digits, server):
    root, args, expected = kinds
    proc = cli("digits", *args, "--url", server.url, "--json", "--batch-size", "4", cwd=root)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert_matches_onnxruntime(doc, expected, digits)
    assert doc["summary"]["target"] == server.url


def test_recursive_glob_and_folder_take_only_image_and_tensor_files(kinds, digits, model_repo, capsys, monkeypatch):
    root, _, expected = kinds
    (root / "images" / "notes.txt").write_text("not an input")
    (root / "images" / ".hidden.png").write_bytes(b"not an image either")
    monkeypatch.chdir(root)
    images = {k: v for k, v in expected.items() if k.startswith("images/")}
    for pattern in ("images", "**/*.png"):
        code, out, err = run(capsys, "digits", pattern, "--repo", str(model_repo), "--json")
        assert code == 0, err
        assert_matches_onnxruntime(json.loads(out), images, digits)


def test_stdin_list_of_paths(kinds, digits, model_repo):
    root, _, expected = kinds
    paths = "\n".join(
        ["images/" + p.split("/", 1)[1] for p in expected if p.startswith("images/")][:3] + ["", "nested.json"]
    )
    proc = cli("digits", "-", "--repo", str(model_repo), "--json", cwd=root, stdin=paths.encode())
    assert proc.returncode == 0, proc.stderr
    assert [p["input"] for p in json.loads(proc.stdout)["predictions"]] == [p for p in paths.splitlines() if p]


@pytest.mark.parametrize("kind", ["npy", "json", "v2", "png"])
def test_stdin_tensor_or_image(kind, kinds, digits, model_repo, capsys, monkeypatch):
    root, _, _ = kinds
    data = {
        "npy": (root / "batch.npy").read_bytes(),
        "json": (root / "data.json").read_bytes(),
        "v2": (root / "request.json").read_bytes(),
        "png": (root / "images" / digits["labels"][0] / "digit0.png").read_bytes(),
    }[kind]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, out, err = run(capsys, "digits", "-", "--repo", str(model_repo), "--json")
    assert code == 0, err
    predictions = json.loads(out)["predictions"]
    assert [p["label"] for p in predictions] == digits["labels"][: len(predictions)]
    assert predictions[0]["input"] in ("<stdin>", "<stdin>[0]")


# --- output ---------------------------------------------------------------------------------------------


def test_json_top_k_and_csv_say_the_same(kinds, digits, model_repo, capsys, monkeypatch):
    root, _, _ = kinds
    monkeypatch.chdir(root)
    code, out, _ = run(capsys, "digits", "batch.npy", "--repo", str(model_repo), "--json", "--top-k", "3")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"predictions", "errors", "summary"}
    for p in doc["predictions"]:
        assert set(p) == {"input", "label", "probability", "index", "top_k"}
        probs = [t["probability"] for t in p["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9
        assert p["top_k"][0] == {"label": p["label"], "probability": p["probability"]} and p["label"] == str(p["index"])
    assert doc["summary"]["model"] == "digits" and doc["summary"]["version"] == "1" and doc["summary"]["exit_code"] == 0

    code, out, _ = run(capsys, "digits", "batch.npy", "--repo", str(model_repo), "--format", "csv", "--top-k", "3")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["input"] for r in rows] == [p["input"] for p in doc["predictions"]]
    assert [r["label"] for r in rows] == digits["labels"]
    assert [r["label_2"] for r in rows] == [p["top_k"][1]["label"] for p in doc["predictions"]]
    assert [float(r["probability_3"]) for r in rows] == [p["top_k"][2]["probability"] for p in doc["predictions"]]


def test_table_on_stdout(kinds, digits, model_repo):
    root, _, _ = kinds
    proc = cli("digits", "images", "--repo", str(model_repo), "--expect", digits["labels"][0], cwd=root)
    lines = proc.stdout.splitlines()
    row = next(line for line in lines if "digit0.png" in line)
    assert "probability" in lines[1] and "expected" in lines[1]
    assert digits["labels"][0] in row and "yes" in row and f"{digits['probs'][0]:.4f}" in row


def test_output_file_format_from_its_suffix_and_stdout_left_clean(kinds, model_repo, capsys, monkeypatch, tmp_path):
    root, _, _ = kinds
    monkeypatch.chdir(root)
    for _ in range(2):  # the second time the report lies in the input folder: it is not read as an input
        code, out, err = run(capsys, "digits", ".", "--repo", str(model_repo), "-o", "out/report.json")
        assert code == 0 and out == "" and "report.json" in err
        assert json.loads((root / "out" / "report.json").read_text())["summary"]["predicted"] == 24
    code, out, _ = run(capsys, "digits", "images", "--repo", str(model_repo), "--output", str(tmp_path / "report.csv"))
    assert code == 0 and len(list(csv.DictReader(io.StringIO((tmp_path / "report.csv").read_text())))) == N


# --- exit codes -----------------------------------------------------------------------------------------


def test_bad_inputs_get_one_line_each_and_the_rest_are_predicted(kinds, digits, model_repo, tmp_path):
    root, _, _ = kinds
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG but not really")
    (tmp_path / "notes.txt").write_text("hello")
    np.save(tmp_path / "wrong.npy", np.zeros((3, 8), np.float32))
    good = str(root / "single.npy")
    bad = [str(tmp_path / n) for n in ("garbage.png", "notes.txt", "wrong.npy", "missing.png")] + [
        str(tmp_path / "*.jpg")
    ]
    proc = cli("digits", bad[0], good, *bad[1:], "--repo", str(model_repo), "--json")
    assert proc.returncode == 2
    errors = error_lines(proc.stderr)
    assert len(errors) == len(bad)
    for name, line in zip(bad, errors):
        assert name in line
    assert "shape [3, 8]" in errors[2] and "[1, 8, 8]" in errors[2]
    doc = json.loads(proc.stdout)
    assert [p["input"] for p in doc["predictions"]] == [good]
    assert [e["input"] for e in doc["errors"]] == bad
    assert doc["summary"]["failed"] == len(bad) and doc["summary"]["exit_code"] == 2


def test_fail_fast_stops_at_the_first_bad_input(kinds, model_repo, tmp_path, capsys):
    root, _, _ = kinds
    (tmp_path / "bad.png").write_bytes(b"nope")
    args = [str(root / "single.npy"), str(tmp_path / "bad.png"), str(root / "batch.npy")]
    code, out, err = run(
        capsys, "digits", *args, "--repo", str(model_repo), "--json", "--batch-size", "1", "--fail-fast"
    )
    assert code == 2 and len(error_lines(err)) == 1
    doc = json.loads(out)
    assert [p["input"] for p in doc["predictions"]] == [args[0]] and doc["summary"]["stopped_early"]
    code, out, _ = run(capsys, "digits", *args, "--repo", str(model_repo), "--json")  # without: all the rest
    assert code == 2 and len(json.loads(out)["predictions"]) == 1 + N


def test_usage_errors_exit_2_before_any_work(model_repo, capsys):
    for args in (
        ["--no-such-option"],
        ["--json", "--format", "csv"],
        ["--min-accuracy", "0.9"],
        ["--top-k", "0"],
        ["--expect", "3", "--labels-from-folders"],
        ["--expect", "3", "--min-accuracy", "1.5"],
    ):
        code, out, err = run(capsys, "digits", "x.png", "--repo", str(model_repo), *args)
        assert code == 2 and out == "" and "usage: maasctl predict" in err, args
    code, _, err = run(capsys, "digits", "x.png", "--repo", str(model_repo), "--expect", "cat")
    assert code == 2 and "'cat' is not one of the model's labels" in err


def test_unknown_model_exits_3_and_json_still_says_why(model_repo, capsys):
    code, out, err = run(capsys, "nope", "x.png", "--repo", str(model_repo), "--json")
    assert code == 3 and "no model 'nope'" in err
    doc = json.loads(out)
    assert doc["predictions"] == [] and "nope" in doc["errors"][0]["error"] and doc["summary"]["exit_code"] == 3


def test_unreachable_server_exits_3(kinds):
    root, _, _ = kinds
    proc = cli("digits", "single.npy", "--url", f"http://127.0.0.1:{free_port()}", cwd=root)
    assert proc.returncode == 3 and "cannot reach http://127.0.0.1" in proc.stderr and proc.stdout == ""


def test_token_wrong_or_missing_exits_3_right_one_predicts(kinds, model_repo):
    root, _, _ = kinds
    server = start_server(model_repo, "--token", "s3cret")
    try:
        missing = cli("digits", "single.npy", "--url", server.url, cwd=root, env={"MAASCTL_TOKEN": ""})
        wrong = cli("digits", "single.npy", "--url", server.url, "--token", "guess", cwd=root)
        right = cli("digits", "single.npy", "--url", server.url, "--json", cwd=root, env={"MAASCTL_TOKEN": "s3cret"})
    finally:
        stop_server(server)
    assert missing.returncode == 3 and "401" in missing.stderr and "--token" in missing.stderr
    assert wrong.returncode == 3 and "401" in wrong.stderr and "guess" not in wrong.stderr
    assert right.returncode == 0 and len(json.loads(right.stdout)["predictions"]) == 1


def test_help_documents_exit_codes():
    text = cli("--help").stdout
    assert "exit codes:" in text
    for line in (
        "0  every input",
        "1  the gate failed",
        "2  usage or input error",
        "3  model or server unavailable",
        "401/403",
    ):
        assert line in text


# --- gating ---------------------------------------------------------------------------------------------


def test_expect_passes_when_every_label_matches_and_fails_otherwise(kinds, digits, model_repo, capsys):
    root, _, _ = kinds
    single = str(root / "single.npy")
    code, out, err = run(capsys, "digits", single, "--repo", str(model_repo), "--json", "--expect", digits["labels"][0])
    assert code == 0 and "accuracy 100.00% (1 of 1); gate passed" in err
    prediction = json.loads(out)["predictions"][0]
    assert (prediction["expected"], prediction["correct"]) == (digits["labels"][0], True)
    other = str((int(digits["labels"][0]) + 1) % 10)
    code, out, err = run(capsys, "digits", single, "--repo", str(model_repo), "--json", "--expect", other)
    assert code == 1 and f"mismatch: {single}: expected {other}, predicted {digits['labels'][0]}" in err
    summary = json.loads(out)["summary"]
    assert (summary["accuracy"], summary["mismatches"], summary["gate"]) == (0.0, 1, "failed")


def test_labels_from_folders(kinds, model_repo, capsys, monkeypatch):
    root, _, _ = kinds
    monkeypatch.chdir(root)
    code, out, err = run(capsys, "digits", "images", "--repo", str(model_repo), "--json", "--labels-from-folders")
    assert code == 0, err  # kinds filed each image under onnxruntime's label for it
    assert json.loads(out)["summary"]["accuracy"] == 1.0 and json.loads(out)["summary"]["labelled"] == N


def test_labels_file_csv_and_json_with_min_accuracy(kinds, digits, model_repo, capsys, monkeypatch, tmp_path):
    root, _, _ = kinds
    monkeypatch.chdir(tmp_path)  # the labels file's paths are relative to its own folder
    labels = digits["labels"]
    wrong = str((int(labels[1]) + 1) % 10)
    (root / "labels.csv").write_text(
        "input,label\n" + "".join(f"batch.npy[{i}],{labels[i] if i != 1 else wrong}\n" for i in range(N))
    )
    (root / "labels.json").write_text(json.dumps({"batch.npy": labels}))
    base = ["digits", str(root / "batch.npy"), "--repo", str(model_repo), "--json"]

    code, out, _ = run(capsys, *base, "--labels-file", str(root / "labels.json"))
    assert code == 0 and json.loads(out)["summary"]["accuracy"] == 1.0

    code, out, err = run(capsys, *base, "--labels-file", str(root / "labels.csv"))
    summary = json.loads(out)["summary"]
    assert code == 1 and summary["mismatches"] == 1 and summary["accuracy"] == pytest.approx((N - 1) / N)
    assert f"batch.npy[1]: expected {wrong}" in err
    # with --min-accuracy a mismatch alone does not fail; accuracy below the bar does
    assert run(capsys, *base, "--labels-file", str(root / "labels.csv"), "--min-accuracy", "0.8")[0] == 0
    assert run(capsys, *base, "--labels-file", str(root / "labels.csv"), "--min-accuracy", "90%")[0] == 1


def test_labels_file_that_names_no_input_is_an_error(kinds, model_repo, capsys, tmp_path):
    root, _, _ = kinds
    (tmp_path / "labels.csv").write_text("elsewhere.png,3\n")
    code, _, err = run(
        capsys,
        "digits",
        str(root / "single.npy"),
        "--repo",
        str(model_repo),
        "--labels-file",
        str(tmp_path / "labels.csv"),
    )
    assert code == 2 and "no input has an expected label" in err


# --- remote protocol, progress ----------------------------------------------------------------------------


class _StubServer(http.server.BaseHTTPRequestHandler):
    """An Open Inference Protocol server that records requests and answers label 7 in binary."""

    seen: ClassVar[list] = []
    manifest: ClassVar[dict] = {}

    def do_GET(self) -> None:
        self.seen.append((self.command, self.path, dict(self.headers), b""))
        self._reply(200, json.dumps({**self.manifest, "name": "digits", "version": 1}).encode(), {})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.command, self.path, dict(self.headers), body))
        header = json.loads(body[: int(self.headers["Inference-Header-Content-Length"])])
        n = header["inputs"][0]["shape"][0]
        logits = np.zeros((n, 10), "<f4")
        logits[:, 7] = 5
        out = json.dumps(
            {
                "model_name": "digits",
                "outputs": [
                    {
                        "name": "logits",
                        "datatype": "FP32",
                        "shape": [n, 10],
                        "parameters": {"binary_data_size": logits.nbytes},
                    }
                ],
            }
        ).encode()
        self._reply(200, out + logits.tobytes(), {"Inference-Header-Content-Length": str(len(out))})

    def _reply(self, status: int, body: bytes, headers: dict) -> None:
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_remote_sends_binary_tensors_and_the_token(kinds, model_repo, digits):
    root, _, _ = kinds
    _StubServer.manifest = json.loads((model_repo / "digits" / "1" / "model.json").read_text())
    _StubServer.seen = []
    stub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StubServer)
    thread = threading.Thread(target=stub.serve_forever, daemon=True)
    thread.start()
    try:
        proc = cli(
            "digits:1",
            "batch.npy",
            "--url",
            f"http://127.0.0.1:{stub.server_address[1]}",
            "--json",
            "--batch-size",
            "4",
            cwd=root,
            env={"MAASCTL_TOKEN": "tok"},
        )
    finally:
        stub.shutdown()
        stub.server_close()
    assert proc.returncode == 0, proc.stderr
    assert [p["label"] for p in json.loads(proc.stdout)["predictions"]] == ["7"] * N  # the binary reply, parsed
    infers = [s for s in _StubServer.seen if s[0] == "POST"]
    assert [s[1] for s in infers] == ["/v2/models/digits/versions/1/infer"] * 2  # batches of 4 + 2
    assert all(s[2]["Authorization"] == "Bearer tok" for s in _StubServer.seen)
    _, _, headers, body = infers[0]
    split = int(headers["Inference-Header-Content-Length"])
    sent = json.loads(body[:split])["inputs"][0]
    assert sent == {
        "name": "input",
        "shape": [4, 1, 8, 8],
        "datatype": "FP32",
        "parameters": {"binary_data_size": 4 * 64 * 4},
    }
    assert json.loads(body[:split])["outputs"] == [{"name": "logits", "parameters": {"binary_data": True}}]
    np.testing.assert_array_equal(np.frombuffer(body[split:], "<f4").reshape(4, 1, 8, 8), digits["x"][:4])


def test_progress_bar_only_when_stderr_is_a_terminal(model_repo, digits, tmp_path):
    for i in range(120):
        Image.fromarray(digits["raw"][i % N]).save(tmp_path / f"{i:03d}.png")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "maasctl", "predict", "digits", str(tmp_path), "--repo", str(model_repo), "--json"],
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    terminal = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    out = proc.stdout.read()
    proc.stdout.close()
    assert proc.wait() == 0
    assert b"120/120" in terminal and len(json.loads(out)["predictions"]) == 120
    piped = cli("digits", str(tmp_path), "--repo", str(model_repo), "--json")
    assert "120/120" not in piped.stderr and piped.stderr.count("\n") == 1  # a log gets the summary line only


# --- speed-ups that must not show: no needless convert, batches run while the next inputs are read ------


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_images_of_every_mode_load_as_with_a_plain_convert(tmp_path, mode):
    """load_image skips convert() when an image already has the model's mode: the pixels are what it gave."""
    from maasctl.preprocess import load_image

    rng = np.random.default_rng(0)
    images = {
        "gray.png": Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)),
        "rgb.png": Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (13, 9, 4), dtype=np.uint8)),
        "photo.jpg": Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)),
        "palette.gif": Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert("P"),
        "bits.bmp": Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).convert("1"),
        "scan.tiff": Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)),
    }
    spec = {"mode": mode, "width": 8, "height": 8}
    for name, img in images.items():
        path = tmp_path / name
        img.save(path)
        with Image.open(path) as ref:  # what load_image did before
            want = np.asarray(ref.convert(mode).resize((8, 8), Image.Resampling.BILINEAR), dtype=np.uint8)
        got = load_image(path, spec)
        assert got.dtype == np.uint8 and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


class _SlowTarget:
    """A local stand-in whose batches take a while (so inputs are read ahead meanwhile) and can fail."""

    def __init__(self, manifest: dict, fail: dict[int, Exception]) -> None:
        self.manifest, self.fail, self.calls, self.reads_during = manifest, fail, 0, []

    def logits(self, batch: np.ndarray) -> np.ndarray:
        import time

        from maasctl.predict import engine

        self.calls += 1
        if self.calls in self.fail:
            raise self.fail[self.calls]
        before = engine.load_source.reads
        time.sleep(0.05)
        self.reads_during.append(engine.load_source.reads - before)
        return batch.reshape(len(batch), -1)[:, :10] * 0 + np.arange(10, dtype=np.float32)


@pytest.mark.parametrize("fail_fast", [False, True])
@pytest.mark.parametrize("fail", ["none", "batch", "fatal"])
def test_reading_ahead_while_a_batch_runs_changes_nothing_but_the_timing(
    kinds, model_repo, tmp_path, monkeypatch, fail, fail_fast
):
    """Problems, progress, --fail-fast and a fatal error happen in input order, as with no read-ahead."""
    from maasctl.errors import Unavailable
    from maasctl.predict import engine
    from maasctl.predict.inputs import expand_inputs

    root, _, _ = kinds
    images = sorted(str(p) for p in (root / "images").rglob("*.png"))
    (tmp_path / "bad.png").write_bytes(b"nope")
    bad = str(tmp_path / "bad.png")
    inputs = (
        images[:3] + [bad, str(root / "batch.npy"), str(tmp_path / "missing.png")] + images[3:] + [bad] + images * 2
    )
    manifest = json.loads((model_repo / "digits" / "1" / "model.json").read_text())
    failures = {"none": {}, "batch": {3: UsageError("refused")}, "fatal": {4: Unavailable("gone")}}[fail]

    real_load_source = engine.load_source

    def counting_load_source(*args):
        counting_load_source.reads += 1
        return real_load_source(*args)

    counting_load_source.reads = 0
    monkeypatch.setattr(engine, "load_source", counting_load_source)

    def outcome(read_ahead: bool) -> tuple:
        monkeypatch.setattr(engine, "_usable_cpus", lambda: 2 if read_ahead else 1)  # one CPU: no read-ahead
        events: list = []
        target = _SlowTarget(manifest, failures)
        out = engine.run_predictions(
            target,
            expand_inputs(inputs),
            batch_size=4,
            top_k=2,
            fail_fast=fail_fast,
            on_problem=lambda p: events.append(("problem", p.input, p.message)),
            on_source=lambda: events.append("source"),
        )
        return (
            [(p.input, p.label, p.top_k) for p in out.predictions],
            out.problems,
            out.fatal,
            out.stopped,
            events,
            target,
        )

    *ahead, target = outcome(read_ahead=True)
    *plain, sequential = outcome(read_ahead=False)
    assert ahead == plain
    assert not any(sequential.reads_during)
    if fail == "none" and not fail_fast:
        assert len(ahead[0]) == 3 + N + 3 + 2 * N and any(target.reads_during)  # it did read ahead


# --- CSV rows (tabular models) and texts (text models) ------------------------------------------------------

from helpers import ROOT, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def rows_and_texts(tmp_path_factory):
    """iris-mlp and reviews-gru trained and exported with the real CLI; torchscript exports in a quarter of the time."""
    from concurrent.futures import ThreadPoolExecutor

    ws = tmp_path_factory.mktemp("rows")
    run_cli("examples", cwd=ws)
    recipes = ROOT / "recipes"

    def train_and_export(recipe: str, epochs: int) -> None:  # the two models side by side: most of it is start-up
        run = json.loads(
            run_cli("train", str(recipes / recipe), "--set", f"train.epochs={epochs}", "--json", cwd=ws).stdout
        )
        run_cli("export", run["run_dir"], "--exporter", "torchscript", "--json", cwd=ws)

    with ThreadPoolExecutor(2) as pool:
        for done in [
            pool.submit(train_and_export, "iris_mlp.yaml", 30),
            pool.submit(train_and_export, "reviews_gru.yaml", 3),
        ]:
            done.result()
    srv = start_server(ws / "artifacts" / "models")
    yield ws, srv
    stop_server(srv)


def _predict_rows(ws: Path, *args: str) -> tuple[int, dict]:
    proc = run_cli("predict", *args, "--repo", str(ws / "artifacts" / "models"), "--json", cwd=ws, check=False)
    return proc.returncode, json.loads(proc.stdout)


def test_csv_rows_local_match_labels_and_server(rows_and_texts):
    ws, srv = rows_and_texts
    code, local = _predict_rows(
        ws, "iris-mlp", "data/examples/iris.csv", "--labels-from-column", "--min-accuracy", "85%"
    )
    assert code == 0, local["errors"]
    assert local["summary"]["predicted"] == 150 and local["summary"]["accuracy"] >= 0.85
    assert local["predictions"][0]["input"] == "data/examples/iris.csv[0]"  # 0-based data rows
    with open(ws / "data/examples/iris.csv", newline="") as f:
        species = [r["species"] for r in csv.DictReader(f)]
    assert [p["expected"] for p in local["predictions"]] == species
    code, remote = _predict_rows(ws, "iris-mlp", "data/examples/iris.csv", "--url", srv.url)
    assert code == 0, remote["errors"]
    assert [p["label"] for p in remote["predictions"]] == [p["label"] for p in local["predictions"]]
    assert np.allclose(
        [p["probability"] for p in remote["predictions"]], [p["probability"] for p in local["predictions"]], atol=1e-5
    )


def test_csv_columns_by_name_and_bad_cells(rows_and_texts):
    ws, _ = rows_and_texts
    # columns in another order, an extra column: matched by header name
    (ws / "shuffled.csv").write_text(
        "note,petal_width_cm,petal_length_cm,sepal_width_cm,sepal_length_cm\nx,0.2,1.4,3.5,5.1\ny,2.5,6.0,3.3,6.3\n"
    )
    code, doc = _predict_rows(ws, "iris-mlp", "shuffled.csv")
    assert code == 0 and [p["label"] for p in doc["predictions"]] == ["setosa", "virginica"]
    (ws / "missing.csv").write_text("sepal_length_cm,petal_length_cm\n5.1,1.4\n")
    code, doc = _predict_rows(ws, "iris-mlp", "missing.csv")
    assert code == 2 and not doc["predictions"]
    assert len(doc["errors"]) == 1 and "missing.csv" in doc["errors"][0]["error"]
    assert "sepal_width_cm, petal_width_cm" in doc["errors"][0]["error"]
    (ws / "cells.csv").write_text(
        "sepal_length_cm,sepal_width_cm,petal_length_cm,petal_width_cm\n5.1,3.5,1.4,0.2\n5.1,abc,1.4,0.2\n6.3,3.3,6.0,2.5\n"
    )
    code, doc = _predict_rows(ws, "iris-mlp", "cells.csv")
    assert code == 2
    assert [p["input"] for p in doc["predictions"]] == ["cells.csv[0]", "cells.csv[2]"]
    assert doc["errors"][0]["input"] == "cells.csv[1]"
    assert (
        "sepal_width_cm" in doc["errors"][0]["error"]
        and "'abc'" in doc["errors"][0]["error"]
        and "line 3" in doc["errors"][0]["error"]
    )


def test_texts_local_and_remote_agree(rows_and_texts):
    ws, srv = rows_and_texts
    (ws / "reviews.txt").write_text("The lamp is sturdy and quiet.\n\nThis kettle is not sturdy at all\n")
    args = (
        "reviews-gru",
        "reviews.txt",
        "data/examples/reviews.jsonl",
        "--text",
        "not useful",
        "--text",
        "great blender",
    )
    code, local = _predict_rows(ws, *args)
    assert code == 0, local["errors"]
    names = [p["input"] for p in local["predictions"]]
    assert names[:2] == ["reviews.txt[0]", "reviews.txt[1]"] and names[-2:] == ["--text[0]", "--text[1]"]
    assert len(names) == 2 + 800 + 2
    assert {p["label"] for p in local["predictions"]} <= {"negative", "positive"}
    code, remote = _predict_rows(ws, *args, "--url", srv.url)
    assert code == 0, remote["errors"]
    assert [(p["input"], p["label"]) for p in remote["predictions"]] == [
        (p["input"], p["label"]) for p in local["predictions"]
    ]
    # the JSONL's own labels gate it
    code, gated = _predict_rows(
        ws, "reviews-gru", "data/examples/reviews.jsonl", "--labels-from-column", "--min-accuracy", "0.5"
    )
    assert gated["summary"]["labelled"] == 800
    assert gated["summary"]["gate"] == ("passed" if gated["summary"]["accuracy"] >= 0.5 else "failed")
    assert code == (0 if gated["summary"]["accuracy"] >= 0.5 else 1)
    # A file whose every text appears twice, once with each label, scores exactly 50% whatever the model learnt
    # (the same text gets the same prediction), so the gate's outcome is known: 50% passes, 51% fails.
    rows = [json.loads(line) for line in (ws / "data/examples/reviews.jsonl").read_text().splitlines()[:20]]
    flip = {"positive": "negative", "negative": "positive"}
    both = [r for row in rows for r in (row, {**row, "label": flip[row["label"]]})]
    (ws / "both.jsonl").write_text("".join(json.dumps(r) + "\n" for r in both))
    code, gated = _predict_rows(ws, "reviews-gru", "both.jsonl", "--labels-from-column", "--min-accuracy", "50%")
    assert (code, gated["summary"]["gate"], gated["summary"]["accuracy"]) == (0, "passed", 0.5)
    assert (gated["summary"]["labelled"], gated["summary"]["mismatches"]) == (40, 20)
    code, gated = _predict_rows(ws, "reviews-gru", "both.jsonl", "--labels-from-column", "--min-accuracy", "51%")
    assert (code, gated["summary"]["gate"], gated["summary"]["accuracy"]) == (1, "failed", 0.5)


def test_inputs_the_model_does_not_take(rows_and_texts, model_repo):
    ws, _ = rows_and_texts
    (ws / "one.txt").write_text("hello\n")
    png = next(Path(ws / "data/examples/digits_png").rglob("*.png"))
    code, doc = _predict_rows(ws, "iris-mlp", "one.txt", "--text", "hi", str(png))
    assert code == 2 and not doc["predictions"] and len(doc["errors"]) == 3
    assert all("the model takes CSV rows with columns sepal_length_cm" in e["error"] for e in doc["errors"])
    assert [e["input"] for e in doc["errors"]] == ["one.txt", str(png), "--text[0]"]
    code, doc = _predict_rows(ws, "reviews-gru", "data/examples/iris.csv", str(png))
    assert code == 2 and all("the model takes texts" in e["error"] for e in doc["errors"])
    assert "iris.csv" in doc["errors"][0]["error"]
    # an image model refuses rows and texts, naming what it takes
    proc = run_cli(
        "predict",
        "digits",
        "data/examples/iris.csv",
        "--text",
        "hi",
        "--repo",
        str(model_repo),
        "--json",
        cwd=ws,
        check=False,
    )
    assert proc.returncode == 2
    assert all("the model takes images" in e["error"] for e in json.loads(proc.stdout)["errors"])
    proc = run_cli("predict", "iris-mlp", "--repo", str(ws / "artifacts" / "models"), cwd=ws, check=False)
    assert proc.returncode == 2 and "--text" in proc.stderr
