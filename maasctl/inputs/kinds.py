"""Which kind of input a file holds: from its name's suffix, a media type, or its first bytes. One table each,
used by `predict` (files, folders, stdin) and by `serve` (upload parts and bodies) alike."""

from __future__ import annotations

import os

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
TENSOR_SUFFIXES = frozenset({".npy", ".npz", ".json"})
# Rows and texts: read when named outright (never picked from folders or patterns, where labels files live).
ROW_SUFFIXES = {".csv": "csv", ".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# A raw body's (or a suffix-less file part's) media type -> its kind.
MEDIA_KINDS = {
    "text/csv": "csv",
    "application/csv": "csv",
    "text/plain": "txt",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
    "application/json": "json",
    "application/x-npy": "npy",
    "application/x-npz": "npz",
    "application/zip": "npz",
}
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


def kind_of(path: str) -> str:
    """The kind of a file named outright: by suffix, and an image when the suffix says nothing else."""
    suffix = os.path.splitext(path)[1].lower()
    return suffix[1:] if suffix in TENSOR_SUFFIXES else ROW_SUFFIXES.get(suffix, "image")


def selected_kind(name: str) -> str | None:
    """The kind of a file a folder or pattern takes (an image or tensor suffix, not hidden), else None."""
    if name.startswith("."):
        return None
    suffix = os.path.splitext(name)[1].lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return suffix[1:] if suffix in TENSOR_SUFFIXES else None


def media_type(content_type: str | None) -> str:
    """'Text/CSV; charset=utf-8' -> 'text/csv'."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def sniff_binary(data: bytes) -> str:
    """npy | npz | image, from the first bytes of binary data whose name and type say nothing."""
    if data.startswith(NPY_MAGIC):
        return "npy"
    if data.startswith(ZIP_MAGIC):
        return "npz"
    return "image"
