from __future__ import annotations

import importlib.metadata as md
import os
from pathlib import Path

from helpers import run_cli


def _installed(name: str) -> bool:
    try:
        md.version(name)
    except md.PackageNotFoundError:
        return False
    return True


def test_doctor_reports_versions_and_providers():
    proc = run_cli("doctor", check=False)
    # The test environment must not carry the conflict itself; where it does, doctor has to say so (exit 1).
    conflict = _installed("onnxruntime") and _installed("onnxruntime-gpu")
    assert proc.returncode == (1 if conflict else 0), proc.stderr
    assert ("both onnxruntime and onnxruntime-gpu are installed" in proc.stderr) == conflict
    assert "onnxruntime providers" in proc.stderr and "CPUExecutionProvider" in proc.stderr
    assert "torch sees CUDA" in proc.stderr


def _fake_distribution(site: Path, name: str, version: str) -> None:
    """Package metadata alone, as pip leaves it: what importlib.metadata (and so doctor) reads."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")


def test_doctor_detects_both_onnxruntime_packages(tmp_path):
    # Both distributions' metadata on the path, as after `pip install onnxruntime onnxruntime-gpu`; the real
    # onnxruntime package still imports, so the rest of the report is unchanged.
    site = tmp_path / "site"
    _fake_distribution(site, "onnxruntime", "1.99.0")
    _fake_distribution(site, "onnxruntime-gpu", "1.99.1")
    path = os.pathsep.join(p for p in [str(site), os.environ.get("PYTHONPATH", "")] if p)
    proc = run_cli("doctor", check=False, env={"PYTHONPATH": path})
    assert proc.returncode == 1, proc.stderr
    assert "1.99.0" in proc.stderr and "1.99.1" in proc.stderr  # the table shows the versions it found
    assert "warning: both onnxruntime and onnxruntime-gpu are installed" in proc.stderr
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in proc.stderr
    assert "Traceback" not in proc.stderr
