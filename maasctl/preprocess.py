"""The preprocessing contract between training and serving, in numpy and Pillow only.

Training turns its uint8 images into tensors with `normalize_images`; `predict` and the server turn
image files into the same tensors with `load_image` + `normalize_images`, reading the parameters from the
model's manifest. One function on both sides is what keeps them from drifting apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

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
            img = img.convert(spec["mode"])
            size = (spec["width"], spec["height"])
            if img.size != size:
                img = img.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UsageError(f"{name}: not a readable image ({exc.__class__.__name__})") from None
