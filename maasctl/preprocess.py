"""The preprocessing contract between training and serving, in numpy and Pillow only.

Training turns its uint8 images into tensors with `normalize_images`; `predict` and the server turn
image files into the same tensors with `load_image` + `normalize_images`, reading the parameters from the
model's manifest. One function on both sides is what keeps them from drifting apart.
"""

from __future__ import annotations

import math
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


def streamed_image_spec(
    height: int,
    width: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_fraction: float = 1.0,
    interpolation: str = "bilinear",
) -> dict[str, Any]:
    """`image_spec` plus the evaluation transform of streamed image sources (see `load_image`, `eval_transform`)."""
    return {
        **image_spec(height, width, channels, mean, std),
        "resize": CENTER_CROP,
        "crop_fraction": float(crop_fraction),
        "interpolation": interpolation,
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
    """An image file (path or file object) -> uint8 array (H,W) or (H,W,C) in the model's size and colour mode.

    Specs with `resize: shorter_side_center_crop` (streamed image sources) turn the image upright by its EXIF
    orientation, scale 16-bit pixels to 8, resize the shorter side and crop the centre (see `eval_transform`); older
    specs resize the whole image to the model's size, as they were trained."""
    from PIL import Image, UnidentifiedImageError  # Pillow loads only when an image is read

    name = str(source) if isinstance(source, (str, Path)) else "upload"
    try:
        if spec.get("resize") == CENTER_CROP:
            with open_image(source, spec) as img:
                return np.asarray(eval_transform(img, spec), dtype=np.uint8)
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


CENTER_CROP = "shorter_side_center_crop"
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def open_image(source: str | Path | Any, spec: dict[str, Any]) -> Any:
    """The decoded PIL image, upright (EXIF orientation applied) and in the spec's colour mode ("L" or "RGB").

    Training augmentation starts from this image and evaluation/serving from `eval_transform` of it, so both see the
    same pixels whatever the file: greyscale, RGBA or palette (alpha dropped), CMYK, 16-bit (scaled to 8 bits)."""
    from PIL import Image, ImageOps

    with Image.open(source) as opened:
        img = ImageOps.exif_transpose(opened)  # a copy, rotated when the file says so; the file itself is closed
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # convert() would clip 16-bit values at 255 (a white image): keep the 8 most significant bits instead.
        wide = np.asarray(img, dtype=np.uint32 if img.mode == "I" else np.uint16)
        img = Image.fromarray((wide >> 8).clip(0, 255).astype(np.uint8))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow warns when a palette with transparency goes straight to RGB
    return img.convert(spec["mode"]) if img.mode != spec["mode"] else img


def eval_transform(img: Any, spec: dict[str, Any]) -> Any:
    """Resize so the image covers (height, width) / crop_fraction keeping its aspect ratio (for a square size: the
    shorter side to size / crop_fraction, as torchvision's Resize(int) rounds), then crop the centre (height, width).
    crop_fraction 1.0 keeps as much of the image as a centre crop can."""
    from PIL import Image

    h, w = spec["height"], spec["width"]
    fraction = spec.get("crop_fraction", 1.0)
    target_h, target_w = math.floor(h / fraction), math.floor(w / fraction)
    iw, ih = img.size
    if target_h / ih >= target_w / iw:  # the height binds: it gets the target exactly, the width follows
        new_h, new_w = target_h, max(w, int(target_h * iw / ih))
    else:
        new_w, new_h = target_w, max(h, int(target_w * ih / iw))
    if (new_w, new_h) != (iw, ih):
        img = img.resize((new_w, new_h), Image.Resampling[spec.get("interpolation", "bilinear").upper()])
    top, left = round((new_h - h) / 2.0), round((new_w - w) / 2.0)
    return img.crop((left, top, left + w, top + h))


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
