"""wrk (https://github.com/wg/wrk, a C load generator: a system package, `apt-get install -y wrk`) driven by
serve.py: one POST body, `-t1 -cN`, its latency distribution parsed.

wrk costs far less CPU per request than a Python client, which matters on two cores shared with the server: the
Python load generator (_loadgen.py) itself capped the figures it measured.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

MISSING = "wrk is not installed; it is a system package: apt-get install -y wrk (or brew install wrk)"
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def available() -> bool:
    return shutil.which("wrk") is not None


def script(folder: Path, body: bytes, headers: dict[str, str]) -> Path:
    """A wrk Lua script that POSTs `body` (kept in a file beside it, read once) with `headers`."""
    body_file = folder / "wrk-body.bin"
    body_file.write_bytes(body)
    lines = [
        f'local f = assert(io.open("{body_file}", "rb"))',
        "wrk.body = f:read('*a')",
        "f:close()",
        'wrk.method = "POST"',
        *(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()),
    ]
    path = folder / "wrk-post.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(url: str, lua: Path, connections: int, seconds: int) -> dict:
    """One wrk run: requests/s, the latency quartiles and p99 (seconds), and how many answers were not 2xx."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise SystemExit(f"wrk failed ({' '.join(cmd)}):\n{out.stderr or out.stdout}")
    text = out.stdout
    result = {
        "rps": float(_find(r"Requests/sec:\s+([0-9.]+)", text)),
        "requests": int(_find(r"(\d+) requests in", text)),
        "non_2xx": int(_find(r"Non-2xx or 3xx responses:\s+(\d+)", text, "0")),
        "socket_errors": _find(r"Socket errors:([^\n]*)", text, ""),
    }
    for pct in ("50", "75", "90", "99"):
        value, unit = re.search(rf"^\s+{pct}%\s+([0-9.]+)(us|ms|s|m)\s*$", text, re.M).groups()
        result[f"p{pct}_s"] = float(value) * _UNITS[unit]
    return result


def _find(pattern: str, text: str, default: str | None = None) -> str:
    match = re.search(pattern, text)
    if match:
        return match.group(1)
    if default is None:
        raise SystemExit(f"unexpected wrk output (no {pattern!r}):\n{text}")
    return default
