"""Sources -> model-ready samples, with the preprocessing the model's manifest records.

Each source becomes one or more samples (`load_source`): an image decoded to the model's size and colour mode
(normalised batch-wise by `stack_samples`), a tensor holding one sample or a batch, table rows (tabular
models: columns by name, standardised with the manifest's statistics), or texts (text models: tokenised).

JSON — a `.json` file, JSON on stdin, or an `application/json` body — takes one of these shapes everywhere:

- a nested list, or `{"data": nested list}`: a tensor (one sample, or a batch of them);
- `{"inputs": [...]}`: an Open Inference Protocol infer request, checked as the server checks one;
- `{"texts": ["...", ...]}`: texts, for text models;
- `{"rows": [{"column": value, ...}, ...]}`: table rows, for tabular models.

A source that cannot be used at all raises `UsageError` naming it; one bad row of a table gives a `Problem` in
that row's place, so the other rows still run.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from maasctl.errors import UsageError
from maasctl.inputs.types import ModelInput, Problem, Sample, Source, recipe_data

TEXT_NAME = "--text"
JSON_SHAPES = (
    'a nested list, {"data": ...}, an infer request {"inputs": [...]}, {"texts": [...]} or {"rows": [{...}, ...]}'
)


def load_source(source: Source, model_input: ModelInput) -> list[Sample | Problem]:
    """The samples in one source; raises UsageError naming the source when it cannot be used at all."""
    if source.kind == "image":
        return [Sample(source.name, source.name, None, _read_image(source, model_input), image=True)]
    if source.kind == "csv":
        header, records = read_csv_records(source)
        return _table_samples(source.name, header, records, model_input)
    if source.kind in ("txt", "jsonl", "text"):
        return _text_samples(source, _read_texts(source, model_input), model_input)
    if source.kind == "json":
        return _json_samples(source, model_input)
    return _split_batch(source.name, _read_array(source), model_input)


def stack_samples(batch: list[Sample], model_input: ModelInput) -> Any:
    """One input tensor for a batch; images are normalised together (per image it costs 50 µs more); subword texts
    become the model's named inputs, padded to the batch's longest text (a dict).

    Raises ValueError when the samples' shapes differ (a model with dynamic dimensions)."""
    if model_input.kind == "subword":
        from maasctl.preprocess import SubwordEncoder

        return SubwordEncoder(model_input.preprocessing).pad([s.tensor for s in batch])  # type: ignore[arg-type]
    tensors = [s.tensor for s in batch]
    images = [i for i, s in enumerate(batch) if s.image]
    if images:
        from maasctl.preprocess import normalize_images

        normalized = normalize_images(np.stack([tensors[i] for i in images]), model_input.preprocessing or {})
        for i, tensor in zip(images, normalized.astype(model_input.dtype, copy=False)):
            tensors[i] = tensor
    return np.stack(tensors)


def stack_batches(samples: list[Sample], model_input: ModelInput) -> list[tuple[list[Sample], Any]]:
    """One tensor for all samples; one per sample when their shapes differ (a model with dynamic dimensions).
    Subword texts: batches of TEXT_BATCH texts of similar length (`by_length`), in that order, not the input order."""
    if model_input.kind == "subword":
        return [(b, stack_samples(b, model_input)) for b in by_length(samples, TEXT_BATCH)]
    try:
        return [(samples, stack_samples(samples, model_input))]
    except ValueError:
        return [([s], stack_samples([s], model_input)) for s in samples]


TEXT_BATCH = 32  # texts per batch where a server or predict sorts them by length


def by_length(samples: list[Sample], size: int) -> list[list[Sample]]:
    """Samples in batches of `size`, sorted by token count, so that one long text pads only the batch of the long
    ones (padding is to each batch's longest). Callers restore the input order (`in_input_order`)."""
    ranked = sorted(samples, key=lambda s: s.tensor.shape[-1])
    return [ranked[i : i + size] for i in range(0, len(ranked), size)]


def in_input_order(samples: list[Sample], done: list[tuple[Sample, Any]]) -> list[Any]:
    """The results of `done` (sample, result) pairs in the order of `samples`."""
    rank = {id(s): i for i, s in enumerate(samples)}
    return [r for _, r in sorted(done, key=lambda pair: rank[id(pair[0])])]


def load_all(sources: list[Source], model_input: ModelInput) -> tuple[list[Sample], list[Problem]]:
    """Every source's samples, and a problem for each input that cannot be used (the server refuses on any)."""
    samples: list[Sample] = []
    problems: list[Problem] = []
    for source in sources:
        try:
            for item in load_source(source, model_input):
                (problems if isinstance(item, Problem) else samples).append(item)  # type: ignore[arg-type]
        except UsageError as exc:
            problems.append(Problem(source.name, str(exc)))
        except Exception as exc:  # a decoder's own failure (Pillow's DecompressionBombError...): bad input all the same
            why = (str(exc).strip().splitlines() or [""])[0][:200]
            detail = f"{exc.__class__.__name__}{': ' * bool(why)}{why}"
            problems.append(Problem(source.name, f"{source.name}: could not be read ({detail})"))
    return samples, problems


# --- raw bytes ---------------------------------------------------------------------------------------------------


def _raw(source: Source) -> bytes:
    if source.data is not None:
        return source.data
    try:
        with open(source.name, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UsageError(f"{source.name}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{source.name}: cannot read it ({exc.strerror or exc})") from None


def _text(source: Source) -> str:
    try:
        return _raw(source).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{source.name}: not UTF-8 text") from None


def read_csv_records(source: Source) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV file's header and data rows (blank lines skipped); row i is the input FILE[i]."""
    import csv

    reader = csv.DictReader(io.StringIO(_text(source)))
    try:
        return list(reader.fieldnames or []), list(reader)
    except csv.Error as exc:
        raise UsageError(f"{source.name}: not a readable CSV file ({exc})") from None


def read_jsonl_records(source: Source) -> list[Any]:
    """A JSON Lines file's records (blank lines skipped); record i is the input FILE[i]."""
    import json

    records = []
    for n, line in enumerate(_text(source).splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise UsageError(f"{source.name} line {n}: not JSON ({exc})") from None
    return records


# --- images and tensors ------------------------------------------------------------------------------------------


def _read_image(source: Source, model_input: ModelInput) -> np.ndarray:
    from maasctl.preprocess import load_image

    if model_input.kind != "image":
        raise UsageError(f"{source.name}: read as an image, but {model_input.takes()}")
    try:
        return load_image(
            io.BytesIO(source.data) if source.data is not None else source.name, model_input.preprocessing
        )
    except UsageError as exc:
        # preprocess names file objects "upload"; name what the user gave
        raise UsageError(f"{source.name}: {str(exc).partition(': ')[2]}") from None


def _read_array(source: Source) -> np.ndarray:
    """An .npy or .npz tensor (never unpickled: allow_pickle=False)."""
    name = source.name
    raw = _raw(source)
    try:
        if source.kind == "npy":
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        else:
            array = _npz_array(name, raw)
    except UsageError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(f"{name}: not a readable {source.kind} tensor ({exc.__class__.__name__}: {exc})") from None
    return _numeric(name, array)


def _numeric(name: str, array: np.ndarray) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise UsageError(f"{name}: the tensor must hold numbers, not {array.dtype}")
    return array


def _npz_array(name: str, raw: bytes) -> np.ndarray:
    with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
        keys = list(archive.keys())
        if "x" in keys:
            return archive["x"]
        if len(keys) == 1:
            return archive[keys[0]]
    have = ", ".join(keys) or "none"
    raise UsageError(f"{name}: an .npz needs an array named 'x' or exactly one array; it has {have}")


def _split_batch(name: str, array: np.ndarray, model_input: ModelInput) -> list[Sample | Problem]:
    if model_input.kind == "subword":  # several input tensors: an infer request carries them, not one array
        raise UsageError(f"{name}: {model_input.takes()}; its tensors (input_ids, attention_mask...) go to /infer")
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


# --- JSON: one set of shapes for files, stdin and request bodies ---------------------------------------------------


def _json_samples(source: Source, model_input: ModelInput) -> list[Sample | Problem]:
    import orjson

    name, raw = source.name, _raw(source)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{name}: not valid JSON ({exc})") from None
    if isinstance(doc, dict) and "inputs" in doc:
        return _split_batch(name, _v2_request_array(name, raw, model_input), model_input)
    if isinstance(doc, dict) and "texts" in doc:
        texts = doc["texts"]
        if not isinstance(texts, list) or not all(isinstance(t, str) or _is_pair(t) for t in texts):
            raise UsageError(f'{name}: "texts" must be a list of strings (or of [text, text pair] lists)')
        _check_kind(name, "texts", "text", model_input)
        return _text_samples(source, texts, model_input)
    if isinstance(doc, dict) and "rows" in doc:
        header, records = _rows_records(name, doc["rows"])
        return _table_samples(name, header, records, model_input)
    if isinstance(doc, dict):
        if "data" not in doc:
            raise UsageError(f"{name}: JSON input is {JSON_SHAPES}")
        doc = doc["data"]
    try:
        return _split_batch(name, _numeric(name, np.asarray(doc)), model_input)
    except ValueError:
        raise UsageError(f"{name}: the nested lists are ragged (rows of different lengths)") from None


def _v2_request_array(name: str, raw: bytes, model_input: ModelInput) -> np.ndarray:
    """An Open Inference Protocol infer request body, checked exactly as the server would check it."""
    from maasctl.protocol.errors import InvalidInput
    from maasctl.protocol.v2 import TensorSignature, decode_request

    try:
        request = decode_request(raw, None, TensorSignature.from_manifest(model_input.manifest))
    except InvalidInput as exc:
        raise UsageError(f"{name}: {exc.message}") from None
    return request.inputs[model_input.name]


def _rows_records(name: str, rows: Any) -> tuple[list[str], list[dict[str, str]]]:
    """{"rows": [{column: value}, ...]} as the header and string cells a CSV file would give."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UsageError(f'{name}: "rows" must be a list of objects, {{column: value}} each')
    header = list(dict.fromkeys(key for row in rows for key in row))
    return header, [{c: _cell(row.get(c)) for c in header} for row in rows]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        import orjson

        return orjson.dumps(value).decode()  # true, [1, 2]...: read back as "not a number", named
    return str(value)


def _is_pair(t: Any) -> bool:
    return isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t)


def _check_kind(name: str, what: str, kind: str, model_input: ModelInput) -> None:
    if model_input.kind != kind and not (kind == "text" and model_input.kind == "subword"):
        raise UsageError(f"{name}: {what} are inputs for {kind} models, but {model_input.takes()}")


# --- table rows (tabular models) and texts (text models) -----------------------------------------------------------


def _table_samples(
    name: str, header: list[str], records: list[dict[str, str]], model_input: ModelInput
) -> list[Sample | Problem]:
    """Each data row, encoded with `preprocess.encode_rows` (the function training used): blanks imputed, unseen
    categories <unk>; a missing column fails the source, a text in a numeric column its row."""
    from maasctl.preprocess import encode_rows, missing_columns

    _check_kind(name, "CSV rows", "tabular", model_input)
    spec = model_input.preprocessing
    missing = missing_columns(header, spec)
    if missing:
        have = ", ".join(header) or "no header"
        raise UsageError(
            f"{name}: no column {', '.join(missing)} (the model takes {', '.join(spec['columns'])}; the file has "
            f"{have}; other columns are ignored)"
        )
    if not records:
        raise UsageError(f"{name}: a header but no rows")
    x, problems = encode_rows(records, spec)
    x = x.astype(model_input.dtype, copy=False)
    return [
        Problem(f"{name}[{i}]", f"{name}[{i}] (line {i + 2}): {problems[i]}")
        if i in problems
        else Sample(f"{name}[{i}]", name, i, x[i])
        for i in range(len(records))
    ]


def _read_texts(source: Source, model_input: ModelInput) -> list[str]:
    name = source.name
    _check_kind(name, "texts", "text", model_input)
    if source.kind == "text":
        texts: list[str] = [source.data.decode("utf-8") if source.data is not None else ""]
        if not texts[0].strip():
            raise UsageError(f"{name}: an empty text")
    elif source.kind == "txt":
        texts = [line for line in _text(source).splitlines() if line.strip()]
    else:
        column = recipe_data(model_input.manifest).get("text_column") or "text"
        pair = recipe_data(model_input.manifest).get("text_pair_column")
        texts = []
        for i, record in enumerate(read_jsonl_records(source)):
            if not isinstance(record, dict) or not isinstance(record.get(column), str):
                raise UsageError(f"{name}[{i}]: each JSON line needs a string {column!r} (the model's text column)")
            texts.append([record[column], str(record.get(pair) or "")] if pair else record[column])
    return texts


def _text_samples(source: Source, texts: list[str], model_input: ModelInput) -> list[Sample | Problem]:
    from maasctl.preprocess import TextEncoder

    name = source.name
    if not texts:
        raise UsageError(f"{name}: no texts in it")
    if model_input.kind == "subword":
        return _subword_samples(source, texts, model_input)
    ids = TextEncoder(model_input.preprocessing)(texts).astype(model_input.dtype, copy=False)
    if source.kind == "text":  # a --text literal, named --text[i]
        return [Sample(name, TEXT_NAME, int(name[len(TEXT_NAME) + 1 : -1]), ids[0])]
    return [Sample(f"{name}[{i}]", name, i, row) for i, row in enumerate(ids)]


def _subword_samples(source: Source, texts: list[Any], model_input: ModelInput) -> list[Sample | Problem]:
    """Each text's token ids and type ids (2, L), cut at the model's max_len as training cut them; an empty text is
    a problem of its own (the model never saw one: training drops blank texts)."""
    from maasctl.preprocess import SubwordEncoder

    name, spec = source.name, model_input.preprocessing or {}
    names = [source.name] if source.kind == "text" else [f"{name}[{i}]" for i in range(len(texts))]
    firsts = [t[0] if isinstance(t, list) else t for t in texts]
    good = [i for i, t in enumerate(firsts) if t.strip()]
    out: list[Sample | Problem] = [
        Problem(names[i], f"{names[i]}: an empty text") for i, t in enumerate(firsts) if not t.strip()
    ]
    if good:
        pairs = [texts[i][1] if isinstance(texts[i], list) else "" for i in good] if spec.get("pair") else None
        rows = SubwordEncoder(spec).encode([firsts[i] for i in good], pairs)
        for i, row in zip(good, rows):
            if source.kind == "text":
                out.append(Sample(name, TEXT_NAME, int(name[len(TEXT_NAME) + 1 : -1]), row))
            else:
                out.append(Sample(names[i], name, i, row))
    return out
