"""What `maasctl predict` reads: its arguments as sources.

Files as named, folders walked recursively, glob patterns expanded here (so a quoted `'data/**/*.png'` works as
well as one the shell expanded), and `-` for stdin. What a source holds is then decoded by the inference-I/O
layer (`maasctl.inputs.decode`), the same code the server uses for uploads.

An argument that names nothing readable becomes a `Problem` in its place, never raised, so the rest still run.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from typing import BinaryIO

from maasctl.inputs.kinds import kind_of, selected_kind, sniff_binary
from maasctl.inputs.types import Problem, Source

TEXT_NAME = "--text"
STDIN = "-"
STDIN_NAME = "<stdin>"
_GLOB = re.compile(r"[*?[]")


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
            kind = selected_kind(f)  # from the name alone: one suffix look-up per file
            if kind is not None:
                path = os.path.join(folder, f)
                if not (excluded and os.path.abspath(path) in excluded):
                    found.append(Source(path, kind))
    return found


def _selectable(path: str, excluded: set[str]) -> bool:
    return selected_kind(os.path.basename(path)) is not None and not (excluded and os.path.abspath(path) in excluded)


def _from_stdin(stdin: BinaryIO | None, excluded: set[str]) -> list[Source | Problem]:
    """stdin holds a tensor (.npy, .npz or JSON bytes), an image, or else a list of paths, one per line."""
    if stdin is None or stdin.isatty():
        return [Problem(STDIN, "-: stdin is a terminal; pipe a list of paths, a tensor or an image into it")]
    data = stdin.read()
    if sniff_binary(data) != "image":
        return [Source(STDIN_NAME, sniff_binary(data), data)]
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
