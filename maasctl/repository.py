"""The model repository: `<root>/<name>/<version>/{model.onnx, model.json}`, versions 1, 2, 3...

Read by serve and predict, written by export. numpy-free and torch-free. A version folder appears whole
(staged, then renamed into place) and is never modified afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maasctl.errors import Unavailable, UsageError
from maasctl.fileio import sha256_file

MANIFEST = "model.json"
ONNX_FILE = "model.onnx"
MANIFEST_FORMAT = "maasctl.model/1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: Path

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.path)


def read_manifest(model_dir: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise Unavailable(f"{model_dir}: no {MANIFEST} (not a maasctl model folder)") from None
    except (OSError, ValueError) as exc:
        raise Unavailable(f"{model_dir / MANIFEST}: unreadable manifest ({exc})") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise Unavailable(f"{model_dir / MANIFEST}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return manifest


def verify_onnx(model_dir: Path, manifest: dict[str, Any]) -> None:
    """Refuse a model file whose bytes are not the ones export checked and recorded."""
    onnx_path = model_dir / manifest["onnx"]["file"]
    if not onnx_path.is_file():
        raise Unavailable(f"{onnx_path}: missing")
    actual = sha256_file(onnx_path)
    if actual != manifest["onnx"]["sha256"]:
        raise Unavailable(
            f"{onnx_path}: sha256 {actual[:12]}… does not match the manifest's {manifest['onnx']['sha256'][:12]}…; "
            "the file was changed or truncated after export"
        )


def attach_tokenizer(model_dir: Path, manifest: dict[str, Any], verify: bool = True) -> dict[str, Any]:
    """For subword text models: the tokenizer file filed beside the ONNX file, checked against its sha256 like the
    ONNX file, inlined in the in-memory manifest's preprocessing (`tokenizer_json`) where predict and serve read
    it. Other manifests come back unchanged."""
    spec = manifest.get("preprocessing") or {}
    entry = spec.get("tokenizer") if spec.get("kind") == "subword" else None
    if not isinstance(entry, dict):
        return manifest
    path = model_dir / entry["file"]
    if not path.is_file():
        raise Unavailable(f"{path}: missing (the model's tokenizer)")
    if verify and sha256_file(path) != entry["sha256"]:
        raise Unavailable(f"{path}: sha256 does not match the manifest's; the tokenizer was changed after export")
    return {**manifest, "preprocessing": {**spec, "tokenizer_json": path.read_text(encoding="utf-8")}}


class ModelRepository:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name) and self.versions(p.name)
        )

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdecimal() and (p / MANIFEST).is_file())

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise Unavailable(f"no model {name!r} in {self.root} (models there: {known})")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise Unavailable(f"model {name!r} has no version {version} (versions: {', '.join(map(str, versions))})")
        return ModelVersion(name, version, self.root / name / str(version))

    def add_version(self, name: str, staged: Path) -> ModelVersion:
        """Move a fully written staging folder into place as the next version; returns where it landed."""
        if not _NAME.match(name):
            raise UsageError(
                f"model name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
            )
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        version = (self.versions(name) or [0])[-1] + 1
        while True:
            target = folder / str(version)
            try:
                os.rename(staged, target)  # atomic; fails if another export took this number first
                return ModelVersion(name, version, target)
            except OSError:
                if not target.exists():
                    raise
                version += 1

    def staging_dir(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))


def discard(staged: Path) -> None:
    shutil.rmtree(staged, ignore_errors=True)


def resolve_model(spec: str, repo: ModelRepository) -> ModelVersion:
    """MODEL as given on the command line: a model folder path, `name`, or `name:version`."""
    path = Path(spec)
    if (path / MANIFEST).is_file():
        version = int(path.name) if path.name.isdecimal() else 0
        return ModelVersion(path.parent.name if version else path.name, version, path)
    name, _, version = spec.partition(":")
    if version and not version.isdecimal():
        raise UsageError(f"model {spec!r}: the version after ':' must be a number, e.g. {name}:1")
    return repo.get(name, int(version) if version else None)
