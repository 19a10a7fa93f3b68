"""The inputs of an HTTP upload as sources: multipart parts, or one raw body whose Content-Type says what it is.

No HTTP objects here: the transport parses the request into `Part`s (or a body and its Content-Type). Each file
part is read as the file it is (by its name's suffix, else its Content-Type, else its first bytes); the plain
form fields of one name are texts (text models); a raw body is one source named <body>, as the CLI names stdin.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from maasctl.errors import UsageError
from maasctl.inputs.decode import JSON_SHAPES
from maasctl.inputs.kinds import MEDIA_KINDS, kind_of, media_type, sniff_binary
from maasctl.inputs.types import Source, recipe_data

BODY = "<body>"  # the input name of a raw request body, as the CLI says <stdin>
ACCEPTED = (
    "multipart/form-data (file parts; form fields are texts), image/*, text/csv, text/plain, "
    f"application/x-ndjson, application/json ({JSON_SHAPES}), "
    "application/x-npy, application/octet-stream (an image or a .npy/.npz tensor)"
)


@dataclass(frozen=True)
class Part:
    """One multipart part as the transport found it: a file (`filename` set, maybe "") or a plain form field."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes


def body_sources(content_type: str | None, body: bytes) -> list[Source]:
    """A raw request body as the sources it holds (one, named <body>)."""
    media = media_type(content_type)
    if not body:
        raise UsageError(f"an empty request body; send one of: {ACCEPTED}")
    if media.startswith("image/"):
        return [Source(BODY, "image", body)]
    if media == "application/octet-stream":
        return [Source(BODY, sniff_binary(body), body)]
    kind = MEDIA_KINDS.get(media)
    if kind is None:
        hint = ""
        if media == "application/x-www-form-urlencoded":
            hint = " (curl --data-binary sends that unless told otherwise: add -H 'Content-Type: image/png', say)"
        raise UsageError(f"Content-Type {media or 'missing'!s} is not accepted here{hint}; send one of: {ACCEPTED}")
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
                raise UsageError(f"{field}[{len(texts[field]) - 1}]: an empty text")
            continue
        name = part.filename or part.field or "file"
        if os.path.splitext(part.filename)[1]:
            kind = kind_of(part.filename)
        else:
            media = media_type(part.content_type)
            kind = "image" if media.startswith("image/") else MEDIA_KINDS.get(media) or sniff_binary(part.data)
        sources.append(Source(name, kind, part.data))
    if not sources:
        raise UsageError("no files in the form: send each input as a file part (curl -F file=@seven.png)")
    return [s if isinstance(s, Source) else _texts_source(s, texts[s], manifest) for s in sources]


def _field_text(part: Part, manifest: dict[str, Any]) -> tuple[str, str]:
    field = part.field or "text"
    if field == "top_k":
        raise UsageError("top_k is a query parameter: POST .../predict?top_k=3")
    if (manifest.get("preprocessing") or {}).get("kind") not in ("text", "subword"):
        raise UsageError(
            f"form field {field!r} holds a value, not a file: upload files with curl -F {field}=@PATH (the @)"
        )
    try:
        return field, part.data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"form field {field!r}: not UTF-8 text") from None


def _texts_source(name: str, texts: list[str], manifest: dict[str, Any]) -> Source:
    """Texts as the .jsonl source they stand for (records in the model's text column): read as the CLI reads it."""
    column = recipe_data(manifest).get("text_column") or "text"
    # ASCII-escaped: a raw U+2028 in a record would split its line (the reader splits with str.splitlines)
    return Source(name, "jsonl", "\n".join(json.dumps({column: t}) for t in texts).encode())
