"""`maasctl` as the benchmarks run it: a subprocess of this Python, its output captured, a failure fatal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def cli(*args: str, cwd: Path) -> str:
    """`maasctl ARGS` run in `cwd`; its stdout, or exit with its stderr when it fails."""
    proc = subprocess.run([sys.executable, "-m", "maasctl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"maasctl {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout
