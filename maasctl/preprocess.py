"""The preprocessing contract between training and serving, in numpy and Pillow only.

Training turns its uint8 images into tensors with `normalize_images`; `predict` and the server turn
image files into the same tensors with `load_image` + `normalize_images`, reading the parameters from the
model's manifest. One function on both sides is what keeps them from drifting apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maasctl.errors import UsageError


def image_spec(height: int, width: int, channels: int, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """The manifest's `preprocessing` entry for image models (inputs NCHW float32)."""
    return {
        "kind": "image",
        "height": height,
        "width": width,
        "channels": channels,
        "mode": "L" if channels == 1 else "RGB",
        "scale": 1 / 255,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "layout": "NCHW",
    }


def normalize_images(images: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """uint8 images (N,H,W) or (N,H,W,C) -> float32 (N,C,H,W): x * scale, then (x - mean) / std per channel."""
    x = images.astype(np.float32) * np.float32(spec["scale"])
    if x.ndim == 3:
        x = x[:, None, :, :]
    else:
        x = x.transpose(0, 3, 1, 2)
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def load_image(source: str | Path | Any, spec: dict[str, Any]) -> np.ndarray:
    """An image file (path or file object) -> uint8 array (H,W) or (H,W,C) in the model's size and colour mode."""
    from PIL import Image, UnidentifiedImageError  # Pillow loads only when an image is read

    name = str(source) if isinstance(source, (str, Path)) else "upload"
    try:
        with Image.open(source) as img:
            if img.mode != spec["mode"]:  # convert() to the mode an image already has only copies it: ~8 µs an image
                img = img.convert(spec["mode"])
            size = (spec["width"], spec["height"])
            if img.size != size:
                img = img.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"{name}: not a readable image ({exc.__class__.__name__})") from None


# --- tabular -------------------------------------------------------------------------------------------------


def tabular_spec(columns: Sequence[str], mean: np.ndarray, std: np.ndarray) -> dict[str, Any]:
    """Standardization with training-split statistics; constant columns get std 1 so they pass through as 0."""
    std = np.where(std > 0, std, 1.0)
    return {
        "kind": "tabular",
        "columns": list(columns),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }


def normalize_features(rows: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """float rows (N,F), columns in spec order -> standardized float32 (N,F)."""
    mean = np.asarray(spec["mean"], dtype=np.float64)
    std = np.asarray(spec["std"], dtype=np.float64)
    return ((np.asarray(rows, dtype=np.float64) - mean) / std).astype(np.float32)


# --- text ----------------------------------------------------------------------------------------------------

PAD, UNK = 0, 1
TOKEN_PATTERN = r"\w+|[^\w\s]"


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    import re

    return re.findall(TOKEN_PATTERN, text.lower() if lowercase else text)


def text_spec(vocab: Sequence[str], max_len: int, lowercase: bool) -> dict[str, Any]:
    """`vocab[i]` is the token with id i + 2 (0 is padding, 1 is unknown)."""
    return {
        "kind": "text",
        "vocab": list(vocab),
        "max_len": max_len,
        "lowercase": lowercase,
        "pattern": TOKEN_PATTERN,
        "pad_id": PAD,
        "unk_id": UNK,
    }


class TextEncoder:
    """Texts -> int64 token ids (N, max_len): truncated, padded with 0, unknown tokens 1. Build once per model."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.index = {tok: i + 2 for i, tok in enumerate(spec["vocab"])}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.spec["max_len"]), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.index.get(tok, UNK) for tok in tokenize(text, self.spec["lowercase"])[: self.spec["max_len"]]]
            out[row, : len(ids)] = ids
        return out
