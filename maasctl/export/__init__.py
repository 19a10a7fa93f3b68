"""Export: a trained run -> ONNX, checked against PyTorch, filed as a new repository version. Imports torch."""
