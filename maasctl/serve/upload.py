"""`POST /v2/models/{name}/predict`: files in, labels with probabilities out, for people with curl.

The inputs are what `maasctl predict` reads, sent instead of named: multipart file parts (an image, a .csv
file's rows, a .txt file's lines or a .jsonl file's texts, a .npy/.npz/.json tensor, each by its file name's
suffix, else its part's Content-Type), plain form fields (a text each, for text models), or one raw body
whose Content-Type says what it is. They become model inputs with `maasctl.predict.inputs` (the model's own
preprocessing from its manifest; one source of truth with the CLI) and predictions with its engine, so the
response holds exactly the objects `maasctl predict --json` prints.

Any input that cannot be used fails the whole request with 400, naming the input and the problem. numpy and
Pillow only: no HTTP objects here (rest.py parses the request), never torch or onnx.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from maasctl.errors import MaasctlError, UsageError
from maasctl.predict.engine import is_regression, label_batch, model_labels, value_batch
from maasctl.predict.inputs import ModelInput, Problem, Sample, Source, kind_of, load_source, recipe_data, stack_samples
from maasctl.protocol.errors import InvalidInput
from maasctl.runtime import LoadedModel
from maasctl.serve.dataplane import DataPlane

BODY = "<body>"  # the input name of a raw request body, as the CLI says <stdin>
MAX_TOP_K = 1000
SHOWN_PROBLEMS = 3  # problems named in one error message; the rest are counted

# A raw body's (or a suffix-less file part's) media type -> the kind `maasctl.predict.inputs` reads.
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
ACCEPTED = (
    "multipart/form-data (file parts; form fields are texts), image/*, text/csv, text/plain, "
    'application/x-ndjson, application/json ({"texts": [...]}, {"rows": [{column: value}, ...]} or a tensor), '
    "application/x-npy, application/octet-stream (an image or a .npy/.npz tensor)"
)
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class Part:
    """One multipart part as rest.py found it: a file (`filename` set, maybe "") or a plain form field."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes


def media_type(content_type: str | None) -> str:
    """'Text/CSV; charset=utf-8' -> 'text/csv'."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_top_k(values: list[str]) -> int:
    """The `top_k` query parameter: how many labels each prediction lists (default 1)."""
    if not values:
        return 1
    if len(values) > 1:
        raise InvalidInput(f"top_k given {len(values)} times; give it once")
    value = values[0].strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 6 and 1 <= int(value) <= MAX_TOP_K):
        raise InvalidInput(f"top_k must be a whole number from 1 to {MAX_TOP_K}, not {values[0]!r}")
    return int(value)


# --- the request's inputs -> sources -----------------------------------------------------------------------------


def body_sources(content_type: str | None, body: bytes, manifest: dict[str, Any]) -> list[Source]:
    """A raw request body as the sources it holds (one, named <body>)."""
    media = media_type(content_type)
    if not body:
        raise InvalidInput(f"an empty request body; send one of: {ACCEPTED}")
    if media.startswith("image/"):
        return [Source(BODY, "image", body)]
    if media == "application/octet-stream":
        return [Source(BODY, _sniff(body), body)]
    if media == "application/json":
        return [_json_body(body, manifest)]
    kind = MEDIA_KINDS.get(media)
    if kind is None:
        hint = (
            " (curl --data-binary sends that unless told otherwise: add -H 'Content-Type: image/png', say)"
            if media == "application/x-www-form-urlencoded"
            else ""
        )
        raise InvalidInput(f"Content-Type {media or 'missing'!s} is not accepted here{hint}; send one of: {ACCEPTED}")
    return [Source(BODY, kind, body)]


def form_sources(parts: Iterable[Part], manifest: dict[str, Any]) -> list[Source]:
    """Multipart parts as sources: each file by its kind; the plain fields of one name are one source of texts
    (text models; one text each, named FIELD[i]), where the first of them was."""
    sources: list[Source | str] = []  # a str: the name of plain fields, made a source once all are read
    texts: dict[str, list[str]] = {}
    for part in parts:
        if part.filename is None:
            field, text = _field_text(part, manifest)
            if field not in texts:
                sources.append(field)
            texts.setdefault(field, []).append(text)
            if not text.strip():
                raise InvalidInput(f"{field}[{len(texts[field]) - 1}]: an empty text")
            continue
        name = part.filename or part.field or "file"
        if os.path.splitext(part.filename)[1]:
            kind = kind_of(part.filename)
        else:
            media = media_type(part.content_type)
            kind = "image" if media.startswith("image/") else MEDIA_KINDS.get(media) or _sniff(part.data)
        sources.append(Source(name, kind, part.data))
    if not sources:
        raise InvalidInput("no files in the form: send each input as a file part (curl -F file=@seven.png)")
    return [s if isinstance(s, Source) else _texts_source(s, texts[s], manifest) for s in sources]


def _field_text(part: Part, manifest: dict[str, Any]) -> tuple[str, str]:
    field = part.field or "text"
    if field == "top_k":
        raise InvalidInput("top_k is a query parameter: POST .../predict?top_k=3")
    if (manifest.get("preprocessing") or {}).get("kind") != "text":
        raise InvalidInput(
            f"form field {field!r} holds a value, not a file: upload files with curl -F {field}=@PATH (the @)"
        )
    try:
        return field, part.data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"form field {field!r}: not UTF-8 text") from None


def _texts_source(name: str, texts: list[str], manifest: dict[str, Any]) -> Source:
    """Texts as the .jsonl source they stand for (records in the model's text column): read as the CLI reads it."""
    column = recipe_data(manifest).get("text_column") or "text"
    # ASCII-escaped: a raw U+2028 in a record would split its line (the reader splits with str.splitlines)
    return Source(name, "jsonl", "\n".join(json.dumps({column: t}) for t in texts).encode())


def _sniff(data: bytes) -> str:
    if data.startswith(_NPY_MAGIC):
        return "npy"
    if data.startswith(_ZIP_MAGIC):
        return "npz"
    return "image"


def _json_body(body: bytes, manifest: dict[str, Any]) -> Source:
    """{"texts": [...]} and {"rows": [...]} become the .jsonl and .csv sources they stand for; else a tensor."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{BODY}: not valid JSON ({exc})") from None
    if isinstance(doc, dict) and "texts" in doc:
        texts = doc["texts"]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise InvalidInput(f'{BODY}: "texts" must be a list of strings')
        return _texts_source(BODY, texts, manifest)
    if isinstance(doc, dict) and "rows" in doc:
        return Source(BODY, "csv", _rows_csv(doc["rows"]))
    return Source(BODY, "json", body)


def _rows_csv(rows: Any) -> bytes:
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InvalidInput(f'{BODY}: "rows" must be a list of objects, {{column: value}} each')
    header = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else _cell(row[c]) for c in header])
    return out.getvalue().encode("utf-8")


def _cell(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return orjson.dumps(value).decode()  # true, [1, 2]...: read back as "not a number", named
    return str(value)


# --- sources -> predictions --------------------------------------------------------------------------------------


def model_input(model: LoadedModel) -> ModelInput:
    try:
        return ModelInput.from_manifest(model.manifest)
    except MaasctlError as exc:
        raise InvalidInput(f"model {model.name!r} version {model.version} does not take uploads: {exc}") from None


def load_samples(sources: list[Source], spec: ModelInput) -> list[Sample]:
    """Every source's samples, or 400 naming each input that cannot be used (CPU work: run it in a thread)."""
    samples: list[Sample] = []
    problems: list[Problem] = []
    for source in sources:
        try:
            for item in load_source(source, spec):
                if isinstance(item, Problem):
                    problems.append(item)
                else:
                    samples.append(item)
        except UsageError as exc:
            problems.append(Problem(source.name, str(exc)))
        except Exception as exc:  # a decoder's own failure (Pillow's DecompressionBombError...): bad input all the same
            why = (str(exc).strip().splitlines() or [""])[0][:200]
            problems.append(
                Problem(
                    source.name, f"{source.name}: could not be read ({exc.__class__.__name__}{': ' * bool(why)}{why})"
                )
            )
    if problems:
        shown = "; ".join(p.message for p in problems[:SHOWN_PROBLEMS])
        more = len(problems) - SHOWN_PROBLEMS
        raise InvalidInput(shown + (f" (and {more} more problem{'s' * (more > 1)})" if more > 0 else ""))
    if not samples:
        raise InvalidInput("no inputs in the request")
    return samples


def batches(samples: list[Sample], spec: ModelInput) -> list[tuple[list[Sample], np.ndarray]]:
    """One tensor for all samples; one per sample when their shapes differ (a model with dynamic dimensions)."""
    try:
        return [(samples, stack_samples(samples, spec))]
    except ValueError:
        return [([s], stack_samples([s], spec)) for s in samples]


async def predict(dataplane: DataPlane, model: LoadedModel, sources: list[Source], top_k: int) -> dict[str, Any]:
    """The response document: the predictions for `sources`, in order, as `maasctl predict --json` has them."""
    spec = model_input(model)
    work = await asyncio.to_thread(lambda: batches(load_samples(sources, spec), spec))
    output = _output_name(model)
    labels = model_labels(model.manifest)
    version = str(model.version)  # this version, even if a newer one is loaded meanwhile: its labels are these
    predictions = []
    for batch, x in work:
        outputs = await dataplane.infer_tensors(model.name, version, {spec.name: x})
        logits = outputs[output] if output in outputs else next(iter(outputs.values()))
        if logits.ndim != 2 or len(logits) != len(batch):
            raise InvalidInput(
                f"model {model.name!r} does not give class scores (its output has shape {list(logits.shape)} for {len(batch)} inputs); use /infer"
            )
        if is_regression(model.manifest):  # values in the target's units, as `maasctl predict` prints them
            predictions += [p.to_json() for p in value_batch(batch, logits)]
        else:
            predictions += [p.to_json() for p in label_batch(batch, logits, labels, top_k)]
    return {"model_name": model.name, "model_version": version, "predictions": predictions}


def _output_name(model: LoadedModel) -> str | None:
    outputs: list[Mapping[str, Any]] = model.manifest.get("outputs") or []
    return outputs[0].get("name") if outputs else None
