"""`maasctl predict`: label inputs with a model, in-process (onnxruntime) or through a running server.

Imports numpy and, when used, onnxruntime (local), http.client (remote), Pillow (images) and rich (table,
progress bar), never torch or onnx, so a CI step starts fast. Modules: `inputs` (arguments -> sources),
`targets` (local and remote models), `engine` (the batched loop), `gate` (expected labels, accuracy), `report`
(table, JSON, CSV), `command` (the command line). Decoding sources and labelling scores is the inference-I/O
layer's (`maasctl.inputs`), shared with the server.
"""

from maasctl.predict.engine import Outcome, predict, run_predictions
from maasctl.predict.targets import LocalTarget, RemoteTarget, Target

__all__ = ["LocalTarget", "Outcome", "RemoteTarget", "Target", "predict", "run_predictions"]
