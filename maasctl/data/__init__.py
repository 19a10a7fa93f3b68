"""Datasets as numpy arrays, split and preprocessed. No torch here: export checks and ONNX evaluation
read the same splits without it."""

from maasctl.data.datasets import Dataset, build_dataset, stratified_split

__all__ = ["Dataset", "build_dataset", "stratified_split"]
