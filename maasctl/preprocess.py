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
    h, w = spec["height"], spec["width"]
    img = eval_resize(img, spec)
    new_w, new_h = img.size
    top, left = round((new_h - h) / 2.0), round((new_w - w) / 2.0)
    return img.crop((left, top, left + w, top + h))


def eval_resize(img: Any, spec: dict[str, Any]) -> Any:
    """The image resized as `eval_transform` resizes it before cropping (to `eval_resize_size`); an image already at
    that size is returned as it is, not resampled."""
    from PIL import Image

    size = eval_resize_size(img.size, spec)
    if size != img.size:
        img = img.resize(size, Image.Resampling[spec.get("interpolation", "bilinear").upper()])
    return img


def eval_resize_size(size: tuple[int, int], spec: dict[str, Any]) -> tuple[int, int]:
    """(width, height) `eval_transform` resizes an image of `size` (width, height) to before it crops. An image of the
    returned size maps to itself, so an image cached at this size is cropped to exactly what the file gives."""
    h, w = spec["height"], spec["width"]
    fraction = spec.get("crop_fraction", 1.0)
    target_h, target_w = math.floor(h / fraction), math.floor(w / fraction)
    iw, ih = size
    if target_h / ih >= target_w / iw:  # the height binds: it gets the target exactly, the width follows
        return max(w, int(target_h * iw / ih)), target_h
    return target_w, max(h, int(target_w * ih / iw))


# --- tabular -------------------------------------------------------------------------------------------------
# Raw rows (dicts of column -> cell text, as csv.DictReader, JSON rows or Parquet give them) -> float32 features.
# Training fits the statistics and vocabularies on its training split (`fit_tabular`) and encodes every split
# with `encode_rows`; predict and /predict call the same `encode_rows` with the manifest's copy of the spec.
#
# Categorical columns are one-hot: the model's input stays one plain float matrix that any Open Inference
# Protocol client can send (learned embeddings would need an integer input per categorical column).

MISSING_CELLS = frozenset({"", "na", "n/a", "nan", "null", "none"})  # compared stripped and lower-cased
UNK_LEVEL, MISSING_LEVEL = "<unk>", "<missing>"
ID_MIN_ROWS = 20  # fewer rows than this: a column of distinct values is not called an identifier


def is_missing(cell: Any) -> bool:
    """A blank cell: None, NaN, or text such as '', 'NA', 'NaN', 'null' (any case)."""
    if cell is None:
        return True
    if isinstance(cell, float):
        return cell != cell  # NaN
    return str(cell).strip().lower() in MISSING_CELLS


def as_number(cell: Any) -> float | None:
    """The cell's finite float value, or None when it is not a number."""
    if isinstance(cell, bool):
        return None
    try:
        value = float(str(cell).strip())
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def column_types(
    records: Sequence[dict[str, Any]], columns: Sequence[str], categorical: Sequence[str] = ()
) -> dict[str, str]:
    """Each column: 'categorical' when declared so or when any non-blank cell is not a number, else 'numeric'."""
    types = {}
    for col in columns:
        numeric = col not in categorical and all(
            as_number(r.get(col)) is not None for r in records if not is_missing(r.get(col))
        )
        types[col] = "numeric" if numeric else "categorical"
    return types


def useless_columns(records: Sequence[dict[str, Any]], types: dict[str, str]) -> dict[str, str]:
    """Columns that cannot help a model, with the reason: all blank, constant, or an identifier (a distinct
    text in every row, or distinct whole numbers forming one consecutive run, i.e. a row number)."""
    out = {}
    n = len(records)
    for col, kind in types.items():
        cells = [r.get(col) for r in records]
        present = [str(c).strip() for c in cells if not is_missing(c)]
        distinct = set(present)
        if not present:
            out[col] = "every cell is blank"
        elif len(distinct) == 1 and len(present) == n:
            out[col] = f"constant ({present[0]!r} in every row)"
        elif n >= ID_MIN_ROWS and len(distinct) == len(present) == n:
            if kind == "categorical":
                out[col] = "an identifier (a different value in every row)"
            else:
                values = np.sort(np.array([float(v) for v in present]))
                if (values == np.round(values)).all() and values[-1] - values[0] == n - 1:
                    out[col] = "an identifier (consecutive whole numbers, one per row)"
    return out


def fit_tabular(
    records: Sequence[dict[str, Any]], types: dict[str, str], *, min_count: int = 1, max_levels: int = 50
) -> dict[str, Any]:
    """The manifest's `preprocessing` entry for tabular models, fitted on the training split's rows.

    numeric: blanks become the training median; a missing-indicator input follows when the training split has
    blanks in that column; then (x - mean) / std with the training mean and std of the non-blank values.
    categorical: one-hot over [<unk>, <missing>, values seen at least `min_count` times, most frequent first, at
    most `max_levels`]; rarer or unseen values are <unk>, blanks <missing>.
    """
    features: list[dict[str, Any]] = []
    for col, kind in types.items():
        cells = [r.get(col) for r in records]
        present = [c for c in cells if not is_missing(c)]
        if kind == "numeric":
            values = np.array([as_number(c) for c in present], dtype=np.float64)
            if values.size == 0:
                values = np.zeros(1)
            std = float(values.std())
            features.append(
                {
                    "name": col,
                    "type": "numeric",
                    "median": float(np.median(values)),
                    "mean": float(values.mean()),
                    "std": std if std > 0 else 1.0,
                    "missing_indicator": len(present) < len(cells),
                }
            )
        else:
            counts: dict[str, int] = {}
            for c in present:
                counts[str(c).strip()] = counts.get(str(c).strip(), 0) + 1
            kept = sorted((v for v, k in counts.items() if k >= min_count), key=lambda v: (-counts[v], v))
            features.append(
                {"name": col, "type": "categorical", "levels": [UNK_LEVEL, MISSING_LEVEL, *kept[:max_levels]]}
            )
    return {"kind": "tabular", "columns": list(types), "features": features, "inputs": tabular_inputs(features)}


def tabular_inputs(features: Sequence[dict[str, Any]]) -> list[str]:
    """What each position of the encoded row means: `age`, `age:missing`, `island=Dream`, `island=<unk>`."""
    names = []
    for f in features:
        if f["type"] == "numeric":
            names += [f["name"]] + ([f"{f['name']}:missing"] if f.get("missing_indicator") else [])
        else:
            names += [f"{f['name']}={level}" for level in f["levels"]]
    return names


def _tabular_features(spec: dict[str, Any]) -> list[dict[str, Any]]:
    if "features" in spec:
        return spec["features"]
    # Manifests from before categorical columns: numeric columns, standardised, no imputation.
    return [
        {"name": c, "type": "numeric", "mean": m, "std": s, "median": None, "missing_indicator": False}
        for c, m, s in zip(spec["columns"], spec["mean"], spec["std"])
    ]


def encode_rows(rows: Sequence[dict[str, Any]], spec: dict[str, Any]) -> tuple[np.ndarray, dict[int, str]]:
    """Raw rows -> (float32 (N, width), {row index: problem}). A row with a problem (a numeric column holding
    text) has NaN in that column and is to be dropped by the caller; a blank is never a problem (imputed, or
    <missing>) except in manifests older than imputation; an unseen category is <unk>. Columns absent from a
    row count as blank: callers check the header with `missing_columns` first."""
    features = _tabular_features(spec)
    width = sum(1 + bool(f.get("missing_indicator")) if f["type"] == "numeric" else len(f["levels"]) for f in features)
    x = np.zeros((len(rows), width), dtype=np.float32)
    problems: dict[int, str] = {}
    col = 0
    for f in features:
        name = f["name"]
        if f["type"] == "numeric":
            values = np.empty(len(rows), dtype=np.float64)
            blank = np.zeros(len(rows), dtype=bool)
            for i, row in enumerate(rows):
                cell = row.get(name)
                number = None if is_missing(cell) else as_number(cell)
                blank[i] = is_missing(cell)
                if number is None and not (blank[i] and f.get("median") is not None):
                    problems.setdefault(i, f"column {name}: {cell!r} is not a number")
                    number = np.nan
                values[i] = f["median"] if number is None else number
            x[:, col] = (values - f["mean"]) / f["std"]  # float64 arithmetic, then float32: as normalize_features
            col += 1
            if f.get("missing_indicator"):
                x[:, col] = blank
                col += 1
        else:
            index = {level: i for i, level in enumerate(f["levels"])}
            for i, row in enumerate(rows):
                cell = row.get(name)
                level = 1 if is_missing(cell) else index.get(str(cell).strip(), 0)
                x[i, col + level] = 1.0
            col += len(f["levels"])
    return x, problems


def missing_columns(header: Sequence[str], spec: dict[str, Any]) -> list[str]:
    """The spec's raw columns that `header` lacks."""
    have = set(header)
    return [c for c in spec["columns"] if c not in have]


def destandardize(values: Any, target: dict[str, Any]) -> np.ndarray:
    """Regression outputs or targets in standard units -> the target's original units (float64)."""
    return np.asarray(values, dtype=np.float64) * target["std"] + target["mean"]


def tabular_spec(columns: Sequence[str], mean: np.ndarray, std: np.ndarray) -> dict[str, Any]:
    """Numeric-only standardisation (the manifest format before categorical columns); constant columns get std 1
    so they pass through as 0."""
    std = np.where(std > 0, std, 1.0)
    return {
        "kind": "tabular",
        "columns": list(columns),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }


def normalize_features(rows: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """float rows (N,F), columns in spec order -> standardized float32 (N,F) (numeric-only specs)."""
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
