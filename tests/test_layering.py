"""serve and predict must run without torch: a slim serving box, and a fast-starting CI step."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from maasctl.cli import TRAIN_EXTRA

HEAVY = tuple(sorted(TRAIN_EXTRA))  # the `train` extra (pyproject.toml), as the CLI names it in its hint
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


# --- the import graph, read from the source (lazy imports inside functions included) -------------------------------

PACKAGE = Path(__file__).resolve().parent.parent / "maasctl"
TORCH_SIDE = ("torch", "torchvision", "onnx", "onnxscript", "matplotlib", "transformers")
# module prefix -> what it must never import. The serving side (serve, predict, and the layers under them) runs on a
# box without the `train` extra; serve and predict share code only through the layers under them.
FORBIDDEN = {
    "maasctl.serve": ("maasctl.predict", "maasctl.train", "maasctl.models", "maasctl.export", *TORCH_SIDE),
    "maasctl.predict": ("maasctl.serve", "maasctl.train", "maasctl.models", "maasctl.export", *TORCH_SIDE),
    "maasctl.inputs": ("maasctl.serve", "maasctl.predict", "maasctl.train", "maasctl.models", *TORCH_SIDE),
    "maasctl.protocol": ("maasctl.serve", "maasctl.predict", "maasctl.inputs", "maasctl.runtime", *TORCH_SIDE),
    "maasctl.runtime": ("maasctl.serve", "maasctl.predict", "maasctl.inputs", "maasctl.train", *TORCH_SIDE),
    "maasctl.repository": ("maasctl.serve", "maasctl.predict", "maasctl.train", *TORCH_SIDE),
    "maasctl.preprocess": ("maasctl.serve", "maasctl.predict", "maasctl.train", *TORCH_SIDE),
    "maasctl.evaluate": ("maasctl.serve", "maasctl.predict", "maasctl.train", "maasctl.models", *TORCH_SIDE),
    "maasctl.drift": ("maasctl.serve", "maasctl.predict", "maasctl.train", "maasctl.models", *TORCH_SIDE),
    "maasctl.monitor": ("maasctl.serve", "maasctl.predict", "maasctl.train", "maasctl.models", *TORCH_SIDE),
    "maasctl.export": ("maasctl.train.trainer", "maasctl.serve", "maasctl.predict"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function; relative imports resolved."""
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_layer_graph_holds():
    crossings = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for layer, forbidden in FORBIDDEN.items():
            if _under(module, layer):
                crossings += [
                    f"{module} imports {name}" for name in sorted(_imports(path)) for f in forbidden if _under(name, f)
                ]
    assert not crossings, "\n".join(crossings)


def test_the_graph_check_sees_lazy_and_relative_imports(tmp_path):
    """The check itself: an import inside a function, and a relative one, are both found."""
    probe = PACKAGE / "serve" / "_probe_for_layering_test.py"
    probe.write_text("def f():\n    import torch\n    from ..predict import engine\n", encoding="utf-8")
    try:
        found = _imports(probe)
    finally:
        probe.unlink()
    assert "torch" in found and "maasctl.predict.engine" in found


LONG_FUNCTION_LINES = 60


def test_long_functions_say_why_above_them():
    """No function in maasctl/ over 60 lines without a `# long: <reason>` comment right above it (or its
    decorators)."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                above = lines[first - 2].strip() if first >= 2 else ""
                if length > LONG_FUNCTION_LINES and not above.startswith("# long:"):
                    unexplained.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({length} lines)")
    assert not unexplained, "\n".join(unexplained)
