"""Diagnostic only, for serve.py: `maasctl serve` with onnxruntime's intra-op threads told not to spin
(`session.intra_op.allow_spinning=0`, which maasctl's load_model offers but serve does not use). Patched at
launch, so maasctl's code is unchanged; measures what that one setting is worth.

    python benchmarks/_serve_nospin.py --repo REPO --port PORT [serve options]
"""

import functools
import sys

import maasctl.serve.dataplane as dataplane
from maasctl.cli import app

dataplane.load_model = functools.partial(dataplane.load_model, allow_spinning=False)
sys.argv = ["maasctl", "serve", *sys.argv[1:]]
app()
