from __future__ import annotations

from helpers import run_cli


def test_doctor_reports_versions_and_providers():
    proc = run_cli("doctor", check=False)
    assert proc.returncode in (0, 1)
    assert "onnxruntime providers" in proc.stderr and "CPUExecutionProvider" in proc.stderr
    assert "torch sees CUDA" in proc.stderr
