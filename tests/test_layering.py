"""serve and predict must run without torch: a slim serving box, and a fast-starting CI step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "onnx", "onnxscript")


def _modules_after(code: str) -> set[str]:
    probe = code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize("entry", ["launcher", "cli"], ids=["console-script", "typer-app"])
def test_real_local_predict_loads_no_torch(model_repo, tmp_path, entry):
    sample = tmp_path / "x.json"
    sample.write_text(json.dumps([[[0.0] * 8] * 8]))
    code = (
        f"import sys; from maasctl import {entry}\n"
        f"sys.argv = ['maasctl', 'predict', 'digits', {str(sample)!r}, '--repo', {str(model_repo)!r}, '--json']\n"
        f"try:\n    {entry}.main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
    )
    loaded = _modules_after(code)
    assert "onnxruntime" in loaded  # the probe really predicted
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    if entry == "launcher":
        assert "typer" not in loaded  # the fast path skips the typer app entirely


def test_server_modules_load_no_torch():
    loaded = _modules_after("import maasctl.serve.server, maasctl.serve.rest, maasctl.serve.dataplane, maasctl.predict")
    assert not loaded & set(HEAVY)


def test_cli_help_loads_no_torch():
    loaded = _modules_after(
        "import sys; from maasctl import cli\nsys.argv=['maasctl','--help']\ntry:\n    cli.main()\nexcept SystemExit:\n    pass"
    )
    assert "typer" in loaded and not loaded & set(HEAVY + ("onnxruntime",))
