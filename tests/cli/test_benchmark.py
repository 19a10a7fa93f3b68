"""`maasctl benchmark`: variants side by side, through the CLI, on a copy of the session's trained digits run."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import run_cli


@pytest.fixture(scope="module")
def variants(workspace, tmp_path_factory):
    """The session's digits run and its fp32 model, plus the same run exported with int8, in a folder of its own."""
    ws = tmp_path_factory.mktemp("variants")
    shutil.copytree(workspace / "artifacts", ws / "artifacts")
    run_cli("export", "digits", "--name", "digits-int8", "--quantize", "int8", "--max-accuracy-drop", "1", cwd=ws)
    return ws


def test_variants_side_by_side_as_json(variants):
    out = run_cli(
        "benchmark", "digits", "digits-int8", "artifacts/runs/digits", "--repeats", "5", "--json", cwd=variants
    )
    fp32, int8, run = json.loads(out.stdout)
    assert (fp32["kind"], int8["kind"], run["kind"]) == ("model", "model", "run")
    assert (fp32["name"], int8["name"]) == ("digits", "digits-int8")
    # The run, exported afresh to a temporary place, is the filed fp32 model: same weights, same score.
    assert run["parameters"] == fp32["parameters"] > 10_000
    assert run["metrics"] == fp32["metrics"]
    # int8 keeps the parameters, in a quarter of the bytes or so.
    assert int8["parameters"] == fp32["parameters"]
    assert int8["bytes"] < 0.5 * fp32["bytes"]
    # The score is what `maasctl evaluate` reports for each model.
    for row in (fp32, int8):
        evaluated = json.loads(run_cli("evaluate", row["name"], "--json", cwd=variants).stdout)
        assert row["metrics"] == evaluated["metrics"] and row["samples"] == evaluated["samples"]
    for row in (fp32, int8, run):
        assert row["provider"] == "CPUExecutionProvider" and row["split"] == "test"
        assert 0 < row["latency_ms_b1"] < row["latency_ms_b32"] * 10
    assert not (variants / "artifacts" / "models" / "digits" / "2").exists()  # the run was not filed


def test_the_table_names_each_variant(variants):
    out = run_cli("benchmark", "digits", "digits-int8", "--repeats", "3", cwd=variants)
    assert "batch 32 ms" in out.stdout
    lines = [line for line in out.stdout.splitlines() if "digits" in line]
    assert len(lines) == 2 and "accuracy" in lines[0] and "digits-int8" in lines[1], out.stdout


def test_bad_input_is_a_clear_error(variants, tmp_path):
    unknown = run_cli("benchmark", "nope", cwd=variants, check=False)  # as evaluate and predict: 3, naming the others
    assert unknown.returncode == 3 and "no model 'nope'" in unknown.stderr and "digits-int8" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    repeats = run_cli("benchmark", "digits", "--repeats", "0", cwd=variants, check=False)
    assert repeats.returncode == 2 and "--repeats 0" in repeats.stderr
    # A tampered model file is refused (sha256), not measured.
    shutil.copytree(variants / "artifacts" / "models" / "digits", tmp_path / "models" / "digits")
    onnx = tmp_path / "models" / "digits" / "1" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    tampered = run_cli("benchmark", "digits", "--repo", str(tmp_path / "models"), cwd=variants, check=False)
    assert tampered.returncode == 3 and "sha256" in tampered.stderr, tampered.stderr
