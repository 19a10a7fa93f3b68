"""Datasets as numpy arrays, split and preprocessed. No torch here (torchvision loads lazily for its own
source): export checks and ONNX evaluation read the same splits without it."""

from maasctl.data.datasets import Dataset, Split, stratified_split
from maasctl.data.sources import build_dataset

__all__ = ["Dataset", "Split", "build_dataset", "stratified_split"]
