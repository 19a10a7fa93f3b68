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


# --- subword text (a `tokenizers` tokenizer.json: a pretrained model's own, or one trained on the training split) ---

SUBWORD_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def subword_spec(
    tokenizer_json: str, max_len: int, inputs: Sequence[str], pair: bool = False, pad_to_max: bool = False
) -> dict[str, Any]:
    """The `preprocessing` entry of subword text models. `tokenizer_json` travels inline in training metadata;
    export files it as tokenizer.json beside model.onnx (sha256 in the manifest) and loading inlines it again.
    `inputs`: the model's input names in order (`input` alone for from-scratch token models, which are padded to
    `max_len` as trained; pretrained encoders take input_ids, attention_mask [, token_type_ids], padded per batch)."""
    tok = _tokenizer(tokenizer_json, max_len)
    pad_id = tok.token_to_id(_pad_token(tok)) if _pad_token(tok) else 0
    return {
        "kind": "subword",
        "tokenizer_json": tokenizer_json,
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "max_len": int(max_len),
        "pad_id": int(pad_id or 0),
        "inputs": list(inputs),
        "pair": bool(pair),
        "pad_to_max": bool(pad_to_max),
    }


def _pad_token(tok: Any) -> str | None:
    for name in ("[PAD]", "<pad>", "<PAD>"):
        if tok.token_to_id(name) is not None:
            return name
    return None


_TOKENIZERS: dict[tuple[int, int], Any] = {}


def _tokenizer(tokenizer_json: str, max_len: int) -> Any:
    """A `tokenizers.Tokenizer` truncating to `max_len`, parsed once per distinct file (a BERT tokenizer.json takes
    tens of ms to parse; the server builds its inputs per request)."""
    key = (hash(tokenizer_json), max_len)
    if key not in _TOKENIZERS:
        from tokenizers import Tokenizer  # Rust, no torch: loads only when a subword model is used

        tok = Tokenizer.from_str(tokenizer_json)
        tok.no_padding()  # padding is ours: per batch, to its longest member
        # The tokenizer's own truncation counts its special tokens ([CLS] ... [SEP] stay) and cuts pairs longest first.
        tok.enable_truncation(max_length=max_len)
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


class SubwordEncoder:
    """Texts (or text pairs) -> per-text int64 arrays (2, L): token ids and token type ids, L <= max_len (the
    tokenizer's special tokens included; the end is cut off past max_len). `pad` makes a batch's input tensors.
    Training and serving call the same two methods, so served ids are training ids."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.tokenizer = _tokenizer(spec["tokenizer_json"], spec["max_len"])
        self.max_len = spec["max_len"]

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[np.ndarray]:
        if pairs is not None:
            encodings = self.tokenizer.encode_batch(list(zip(texts, pairs)))
        else:
            encodings = self.tokenizer.encode_batch(list(texts))
        return [np.array([enc.ids, enc.type_ids], dtype=np.int64).reshape(2, -1) for enc in encodings]

    def pad(self, rows: Sequence[np.ndarray], length: int | None = None) -> dict[str, np.ndarray]:
        """Rows from `encode` -> {input name: (N, L)}, L the longest row (or `length`), padded with pad_id."""
        if self.spec.get("pad_to_max"):
            length = self.max_len
        length = length or max(1, max(r.shape[1] for r in rows))
        ids = np.full((len(rows), length), self.spec["pad_id"], dtype=np.int64)
        types = np.zeros((len(rows), length), dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, r in enumerate(rows):
            n = min(r.shape[1], length)
            ids[i, :n], types[i, :n], mask[i, :n] = r[0, :n], r[1, :n], 1
        tensors = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "input": ids}
        return {name: tensors[name] for name in self.spec["inputs"]}


def packed_feeds(x: np.ndarray, names: Sequence[str], length: int | None = None) -> dict[str, np.ndarray]:
    """A packed (N, 3, T) training batch (ids, type ids, mask; maasctl/data/text.py) as the graph's named inputs,
    cut to its longest text (or to `length`): how export and evaluate feed the dataset's splits to ONNX."""
    length = length or max(1, int(x[:, 2].sum(1).max()))
    parts = {"input_ids": x[:, 0, :length], "token_type_ids": x[:, 1, :length], "attention_mask": x[:, 2, :length]}
    return {n: np.ascontiguousarray(parts[n]) for n in names}
