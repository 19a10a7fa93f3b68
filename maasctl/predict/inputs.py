"""What `maasctl predict` reads.

Arguments become *sources* (`expand_inputs`): files as named, folders walked recursively, glob patterns
expanded here (so a quoted `'data/**/*.png'` works as well as one the shell expanded), and `-` for stdin.
Each source becomes one or more *samples* (`load_source`): an image decoded to the model's size and colour
mode (normalised by its preprocessing batch-wise, `stack_samples`), a tensor holding one sample or a batch,
a CSV file's rows (tabular models: columns by header name, standardised with the manifest's statistics), or
texts (text models: a .txt file's non-empty lines, a .jsonl file's text column, `--text` literals, tokenised).

A problem with one input is returned as a `Problem` in the input's place, never raised, so the rest still run.
"""

from __future__ import annotations

import glob
import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, BinaryIO

import numpy as np

from maasctl.errors import EXIT_USAGE, Unavailable, UsageError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
TENSOR_SUFFIXES = frozenset({".npy", ".npz", ".json"})
# Rows and texts: read when named outright (never picked from folders or patterns, where labels files live).
ROW_SUFFIXES = {".csv": "csv", ".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl"}
TEXT_NAME = "--text"
STDIN = "-"
STDIN_NAME = "<stdin>"
_GLOB = re.compile(r"[*?[]")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class Source:
    """One thing to read: a file (`data` None), or the bytes that came on stdin."""

    name: str
    kind: str  # image | npy | npz | json | csv | txt | jsonl | text (a --text literal, in `data`)
    data: bytes | None = None


@dataclass(frozen=True)
class Problem:
    """Why an input (or, with `input` None, the whole run) could not be predicted."""

    input: str | None
    message: str
    exit_code: int = EXIT_USAGE

    def to_json(self) -> dict[str, Any]:
        return {"input": self.input, "error": self.message}


@dataclass(frozen=True)
class Sample:
    name: str  # what the user sees: the path, or path[i] for the i-th item of a batch file
    source: str  # the file it came from (or <stdin>)
    item: int | None  # its index in a batch file; None when the file held one sample
    tensor: np.ndarray  # model-ready; for images the decoded uint8 pixels, normalised with their batch
    image: bool = False


@dataclass(frozen=True)
class ModelInput:
    """The model's single input, as the manifest (local) or the server (remote) describes it."""

    name: str
    shape: tuple[int, ...]  # batch axis first; -1 where any size goes
    dtype: np.dtype
    preprocessing: dict[str, Any] | None
    manifest: dict[str, Any]

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> ModelInput:
        inputs = manifest.get("inputs") or []
        if len(inputs) != 1:
            raise Unavailable(f"predict needs a model with exactly one input; this one has {len(inputs)}")
        spec = inputs[0]
        dtype = numeric_dtype(spec["datatype"])
        if dtype is None:
            raise Unavailable(
                f"predict sends numeric tensors; the model's input {spec['name']!r} is {spec['datatype']}"
            )
        return cls(spec["name"], tuple(spec["shape"]), dtype, manifest.get("preprocessing"), manifest)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    def describe_shape(self) -> str:
        return "[" + ", ".join("any" if d < 0 else str(d) for d in self.sample_shape) + "]"


def numeric_dtype(datatype: str) -> np.dtype | None:
    """FP32 -> float32, INT64 -> int64, UINT8 -> uint8, BOOL -> bool; None for BYTES and unknown names.

    The naming rule of the Open Inference Protocol's numeric types (protocol.v2.DATATYPES lists them), applied
    here so that a local prediction does not import the protocol module and orjson (~13 ms of start-up).
    """
    try:
        dtype = np.dtype(datatype.lower().replace("fp", "float"))
    except TypeError:
        return None
    return dtype if dtype.kind in "biuf" else None


# ---------------------------------------------------------------------------------------------------------
# arguments -> sources


def kind_of(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    return suffix[1:] if suffix in TENSOR_SUFFIXES else ROW_SUFFIXES.get(suffix, "image")


def text_sources(texts: Iterable[str]) -> list[Source]:
    """`--text "..."` literals, one sample each, named --text[0], --text[1]..."""
    return [Source(f"{TEXT_NAME}[{i}]", "text", t.encode("utf-8")) for i, t in enumerate(texts)]


def expand_inputs(
    args: Iterable[str], stdin: BinaryIO | None = None, exclude: Iterable[str] = ()
) -> list[Source | Problem]:
    """Sources in argument order, with a `Problem` where an argument names nothing readable.

    Named files are read whatever their suffix; folders and glob patterns select image and tensor files by
    suffix (hidden files and folders skipped), sorted, so a stray README or a previous run's output in the
    folder is not an input. `exclude`: paths never to take from a folder or pattern (the labels file, --output).
    """
    excluded = {os.path.abspath(p) for p in exclude}
    items: list[Source | Problem] = []
    stdin_used = False
    for arg in args:
        if arg == STDIN:
            if stdin_used:
                items.append(Problem(STDIN, "-: stdin can be read only once"))
                continue
            stdin_used = True
            items += _from_stdin(stdin, excluded)
        else:
            items += _expand_path(arg, excluded)
    return items


def _expand_path(arg: str, excluded: set[str]) -> list[Source | Problem]:
    if os.path.isdir(arg):
        found = _walk(arg, excluded)
        return found or [Problem(arg, f"{arg}: no image or tensor files in this folder")]
    if os.path.isfile(arg):
        return [Source(arg, kind_of(arg))]
    if _GLOB.search(arg):
        found, seen = [], set()
        for match in sorted(glob.glob(arg, recursive=True)):
            for source in _walk(match, excluded) if os.path.isdir(match) else [Source(match, kind_of(match))]:
                if source.name not in seen and _selectable(source.name, excluded):
                    seen.add(source.name)
                    found.append(source)
        return found or [Problem(arg, f"{arg}: no image or tensor files match")]
    if os.path.exists(arg):
        return [Problem(arg, f"{arg}: not a regular file or folder")]
    return [Problem(arg, f"{arg}: no such file or folder")]


def _walk(top: str, excluded: set[str]) -> list[Source]:
    found = []
    for folder, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            kind = _selected_kind(f)  # from the name alone: one suffix look-up per file
            if kind is not None:
                path = os.path.join(folder, f)
                if not (excluded and os.path.abspath(path) in excluded):
                    found.append(Source(path, kind))
    return found


def _selectable(path: str, excluded: set[str]) -> bool:
    return _selected_kind(os.path.basename(path)) is not None and not (excluded and os.path.abspath(path) in excluded)


def _selected_kind(name: str) -> str | None:
    """The kind of a file a folder or pattern takes (an image or tensor suffix, not hidden), else None."""
    if name.startswith("."):
        return None
    suffix = os.path.splitext(name)[1].lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return suffix[1:] if suffix in TENSOR_SUFFIXES else None


def _from_stdin(stdin: BinaryIO | None, excluded: set[str]) -> list[Source | Problem]:
    """stdin holds a tensor (.npy, .npz or JSON bytes), an image, or else a list of paths, one per line."""
    if stdin is None or stdin.isatty():
        return [Problem(STDIN, "-: stdin is a terminal; pipe a list of paths, a tensor or an image into it")]
    data = stdin.read()
    if data.startswith(_NPY_MAGIC):
        return [Source(STDIN_NAME, "npy", data)]
    if data.startswith(_ZIP_MAGIC):
        return [Source(STDIN_NAME, "npz", data)]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [Source(STDIN_NAME, "image", data)]  # PNG, JPEG... are not UTF-8 text
    if text.lstrip()[:1] in ("{", "["):
        return [Source(STDIN_NAME, "json", data)]
    items: list[Source | Problem] = []
    for line in text.splitlines():
        if line.strip():
            items += _expand_path(line.strip(), excluded)
    return items or [Problem(STDIN, "-: stdin was empty; pipe a list of paths, a tensor or an image into it")]


# ---------------------------------------------------------------------------------------------------------
# sources -> samples


def load_source(source: Source, model_input: ModelInput) -> list[Sample | Problem]:
    """The samples in one source; raises UsageError naming the source when it cannot be used at all.

    A CSV file may also give a `Problem` for a row it cannot read, in that row's place."""
    if source.kind == "image":
        return [Sample(source.name, source.name, None, _read_image(source, model_input), image=True)]
    if source.kind == "csv":
        return _read_csv_rows(source, model_input)
    if source.kind in ("txt", "jsonl", "text"):
        return _read_texts(source, model_input)
    array = _read_tensor(source, model_input)
    return _split_batch(source.name, array, model_input)


def stack_samples(batch: list[Sample], model_input: ModelInput) -> np.ndarray:
    """One input tensor for a batch; images are normalised together (per image it costs 50 µs more).

    Raises ValueError when the samples' shapes differ (a model with dynamic dimensions)."""
    tensors = [s.tensor for s in batch]
    images = [i for i, s in enumerate(batch) if s.image]
    if images:
        from maasctl.preprocess import normalize_images

        normalized = normalize_images(np.stack([tensors[i] for i in images]), model_input.preprocessing or {})
        for i, tensor in zip(images, normalized.astype(model_input.dtype, copy=False)):
            tensors[i] = tensor
    return np.stack(tensors)


def _read_image(source: Source, model_input: ModelInput) -> np.ndarray:
    from maasctl.preprocess import load_image

    spec = model_input.preprocessing
    if not spec or spec.get("kind") != "image":
        raise UsageError(f"{source.name}: read as an image, but {model_takes(model_input)}")
    try:
        return load_image(io.BytesIO(source.data) if source.data is not None else source.name, spec)
    except UsageError as exc:
        # preprocess names file objects "upload"; name what the user gave
        raise UsageError(f"{source.name}: {str(exc).partition(': ')[2]}") from None


def _read_tensor(source: Source, model_input: ModelInput) -> np.ndarray:
    name = source.name
    try:
        raw = source.data if source.data is not None else _read_bytes(name)
        if source.kind == "npy":
            array = np.load(io.BytesIO(raw), allow_pickle=False)  # never unpickle what the user did not make
        elif source.kind == "npz":
            array = _npz_array(name, raw)
        else:
            array = _json_array(name, raw, model_input)
    except UsageError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(f"{name}: not a readable {source.kind} tensor ({exc.__class__.__name__}: {exc})") from None
    if array.dtype.kind not in "biuf":
        raise UsageError(f"{name}: the tensor must hold numbers, not {array.dtype}")
    return array


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _npz_array(name: str, raw: bytes) -> np.ndarray:
    with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
        keys = list(archive.keys())
        if "x" in keys:
            return archive["x"]
        if len(keys) == 1:
            return archive[keys[0]]
    raise UsageError(
        f"{name}: an .npz needs an array named 'x' or exactly one array; it has {', '.join(keys) or 'none'}"
    )


def _json_array(name: str, raw: bytes, model_input: ModelInput) -> np.ndarray:
    import orjson

    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{name}: not valid JSON ({exc})") from None
    if isinstance(doc, dict) and "inputs" in doc:
        return _v2_request_array(name, raw, model_input)
    if isinstance(doc, dict):
        if "data" not in doc:
            raise UsageError(
                f'{name}: a JSON tensor is a nested list, {{"data": ...}}, or an infer request {{"inputs": [...]}}'
            )
        doc = doc["data"]
    try:
        return np.asarray(doc)
    except ValueError:
        raise UsageError(f"{name}: the nested lists are ragged (rows of different lengths)") from None


def _v2_request_array(name: str, raw: bytes, model_input: ModelInput) -> np.ndarray:
    """An Open Inference Protocol infer request body, checked exactly as the server would check it."""
    from maasctl.protocol.errors import InvalidInput
    from maasctl.protocol.v2 import TensorSignature, decode_request

    manifest = model_input.manifest
    signature = TensorSignature(
        [SimpleNamespace(**t) for t in manifest["inputs"]], [SimpleNamespace(**t) for t in manifest.get("outputs", [])]
    )
    try:
        request = decode_request(raw, None, signature)
    except InvalidInput as exc:
        raise UsageError(f"{name}: {exc.message}") from None
    return request.inputs[model_input.name]


def _split_batch(name: str, array: np.ndarray, model_input: ModelInput) -> list[Sample]:
    want = model_input.sample_shape
    if model_input.dtype.kind in "iu" and array.dtype.kind == "f":  # token ids: never truncate 1.7 to 1 quietly
        raise UsageError(f"{name}: the model takes whole numbers ({model_input.dtype}); the tensor holds {array.dtype}")
    array = array.astype(model_input.dtype, copy=False)
    if _fits(array.shape, want):
        return [Sample(name, name, None, array)]
    if array.ndim == len(want) + 1 and _fits(array.shape[1:], want):
        if len(array) == 0:
            raise UsageError(f"{name}: an empty batch (shape {list(array.shape)})")
        if len(array) == 1:
            return [Sample(name, name, None, array[0])]
        return [Sample(f"{name}[{i}]", name, i, a) for i, a in enumerate(array)]
    shape = model_input.describe_shape()
    raise UsageError(
        f"{name}: a tensor of shape {list(array.shape)}; the model takes {shape} or a batch [N, {shape[1:]}"
    )


def _fits(shape: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return len(shape) == len(want) and all(w < 0 or s == w for s, w in zip(shape, want))


# ---------------------------------------------------------------------------------------------------------
# CSV rows (tabular models) and texts (text models)


def model_takes(model_input: ModelInput) -> str:
    """What to give this model, for error messages."""
    kind = (model_input.preprocessing or {}).get("kind")
    if kind == "image":
        return "the model takes images (or .npy/.npz/.json tensors)"
    if kind == "tabular":
        columns = ", ".join(model_input.preprocessing["columns"])
        return f"the model takes CSV rows with columns {columns} (or .npy/.npz/.json tensors)"
    if kind == "text":
        return "the model takes texts: .txt (one per line), .jsonl, or --text (or .npy/.npz/.json token tensors)"
    return f"the model takes .npy/.npz/.json tensors of shape {model_input.describe_shape()}"


def read_csv_records(source: Source) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV file's header and data rows (blank lines skipped); row i is the input FILE[i]."""
    import csv

    text = _read_text(source)
    reader = csv.DictReader(io.StringIO(text))
    try:
        return list(reader.fieldnames or []), list(reader)
    except csv.Error as exc:
        raise UsageError(f"{source.name}: not a readable CSV file ({exc})") from None


def read_jsonl_records(source: Source) -> list[Any]:
    """A JSON Lines file's records (blank lines skipped); record i is the input FILE[i]."""
    import json

    records = []
    for n, line in enumerate(_read_text(source).splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise UsageError(f"{source.name} line {n}: not JSON ({exc})") from None
    return records


def recipe_data(manifest: dict[str, Any]) -> dict[str, Any]:
    return ((manifest.get("recipe") or {}).get("data") or {}) if isinstance(manifest.get("recipe"), dict) else {}


def _read_text(source: Source) -> str:
    try:
        raw = source.data if source.data is not None else _read_bytes(source.name)
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{source.name}: not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"{source.name}: cannot read it ({exc.strerror or exc})") from None


def _read_csv_rows(source: Source, model_input: ModelInput) -> list[Sample | Problem]:
    """Each data row, encoded with `preprocess.encode_rows` (the function training used): blanks imputed,
    unseen categories <unk>; a missing column fails the file, a text in a numeric column its row."""
    from maasctl.preprocess import encode_rows, missing_columns

    name, spec = source.name, model_input.preprocessing or {}
    if spec.get("kind") != "tabular":
        raise UsageError(f"{name}: CSV rows are inputs for tabular models, but {model_takes(model_input)}")
    header, rows = read_csv_records(source)
    missing = missing_columns(header, spec)
    if missing:
        raise UsageError(
            f"{name}: no column {', '.join(missing)} (the model takes {', '.join(spec['columns'])}; the file has "
            f"{', '.join(header) or 'no header'}; other columns are ignored)"
        )
    if not rows:
        raise UsageError(f"{name}: a header but no rows")
    x, problems = encode_rows(rows, spec)
    x = x.astype(model_input.dtype, copy=False)
    return [
        Problem(f"{name}[{i}]", f"{name}[{i}] (line {i + 2}): {problems[i]}")
        if i in problems
        else Sample(f"{name}[{i}]", name, i, x[i])
        for i in range(len(rows))
    ]


def _read_texts(source: Source, model_input: ModelInput) -> list[Sample | Problem]:
    from maasctl.preprocess import TextEncoder

    name, spec = source.name, model_input.preprocessing or {}
    if spec.get("kind") != "text":
        raise UsageError(f"{name}: texts are inputs for text models, but {model_takes(model_input)}")
    if source.kind == "text":
        texts: list[str] = [source.data.decode("utf-8") if source.data is not None else ""]
        if not texts[0].strip():
            raise UsageError(f"{name}: an empty text")
    elif source.kind == "txt":
        texts = [line for line in _read_text(source).splitlines() if line.strip()]
    else:
        column = recipe_data(model_input.manifest).get("text_column") or "text"
        texts = []
        for i, record in enumerate(read_jsonl_records(source)):
            if not isinstance(record, dict) or not isinstance(record.get(column), str):
                raise UsageError(f"{name}[{i}]: each JSON line needs a string {column!r} (the model's text column)")
            texts.append(record[column])
    if not texts:
        raise UsageError(f"{name}: no texts in it")
    ids = TextEncoder(spec)(texts).astype(model_input.dtype, copy=False)
    if source.kind == "text":
        return [Sample(name, TEXT_NAME, int(name[len(TEXT_NAME) + 1 : -1]), ids[0])]
    return [Sample(f"{name}[{i}]", name, i, row) for i, row in enumerate(ids)]
