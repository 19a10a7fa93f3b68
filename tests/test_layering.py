"""serve and predict must run without torch: a slim serving box, and a fast-starting CI step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "onnx", "onnxscript", "matplotlib")  # the `train` extra (pyproject.toml)
# Runs maasctl's console entry point as on a box where the `train` extra was never installed.
WITHOUT_TRAIN_EXTRA = (
    "import sys\n"
    f"for name in {HEAVY!r}:\n    sys.modules[name] = None  # `import name` now fails as if it were not installed\n"
    "sys.argv = ['maasctl', *sys.argv[1:]]\n"
    "from maasctl.launcher import main\nmain()\n"
)


def _without_train_extra(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TRAIN_EXTRA, *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


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
    loaded = _modules_after(
        "import maasctl.serve.server, maasctl.serve.rest, maasctl.serve.dataplane, maasctl.predict, maasctl.monitor"
    )
    assert not loaded & set(HEAVY)


def test_cli_help_loads_no_torch():
    loaded = _modules_after(
        "import sys; from maasctl import cli\nsys.argv=['maasctl','--help']\ntry:\n    cli.main()\nexcept SystemExit:\n    pass"
    )
    assert "typer" in loaded and not loaded & set(HEAVY + ("onnxruntime",))


@pytest.mark.parametrize("args", [["train"], ["export", "digits"], ["models"], ["quickstart"]], ids=lambda a: a[0])
def test_training_commands_without_the_train_extra_say_what_to_install(workspace, args):
    proc = _without_train_extra(*args, cwd=workspace)
    assert proc.returncode == 3, proc.stderr
    assert "pip install 'maasctl[train]'" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_serving_side_commands_work_without_the_train_extra(workspace, model_repo):
    evaluate = _without_train_extra("evaluate", "digits", "--repo", str(model_repo), "--json", cwd=workspace)
    assert evaluate.returncode == 0, evaluate.stderr
    assert json.loads(evaluate.stdout)["metrics"]["accuracy"] > 0.5
    doctor = _without_train_extra("doctor", cwd=workspace)
    assert doctor.returncode == 0 and "torch not installed" in doctor.stderr, doctor.stderr  # it reports, not fails
