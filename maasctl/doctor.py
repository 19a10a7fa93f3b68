"""`maasctl doctor`: what this machine can do, and the installation problems that silently cost a GPU."""

from __future__ import annotations

import importlib.metadata as md

from rich.console import Console
from rich.table import Table

PACKAGES = [
    "maasctl",
    "torch",
    "torchvision",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "onnxruntime-gpu",
    "numpy",
    "starlette",
    "uvicorn",
]


def installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def run_doctor(console: Console) -> int:
    """Print the report; returns 1 when a known conflict is found, else 0."""
    table = Table("check", "result")
    for name in PACKAGES:
        table.add_row(name, installed(name) or "not installed")
    problems = []
    try:
        import torch

        cuda = torch.cuda.is_available()
        table.add_row(
            "torch sees CUDA", f"yes: {torch.cuda.get_device_name(0)}" if cuda else "no (training runs on CPU)"
        )
    except ImportError:
        table.add_row("torch sees CUDA", "torch not installed")
    try:
        import onnxruntime as ort

        table.add_row("onnxruntime providers", ", ".join(ort.get_available_providers()))
    except ImportError:
        table.add_row("onnxruntime providers", "onnxruntime not importable")
    if installed("onnxruntime") and installed("onnxruntime-gpu"):
        # Both install into the same `onnxruntime` package; whichever was installed last wins, often the CPU one.
        problems.append(
            "both onnxruntime and onnxruntime-gpu are installed; they overwrite each other and CUDA is often lost. "
            "Fix: pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
        )
    console.print(table)
    for p in problems:
        console.print(f"warning: {p}", style="yellow", markup=False)
    return 1 if problems else 0
