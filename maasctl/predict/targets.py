"""Where predictions come from: a repository model in-process (onnxruntime), or a running server.

A target has a `manifest` (inputs, outputs, labels, preprocessing) and turns a batch into logits.
`logits` raises `UsageError` when the server rejects the batch itself (400, 413) and `Unavailable`
when the model or server cannot answer at all (unreachable, 401/403, 404, 5xx).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from maasctl.errors import Unavailable, UsageError
from maasctl.inputs.outputs import scores_output


class Target(Protocol):
    manifest: dict[str, Any]
    name: str
    version: str | None
    where: str  # for the summary: "local (CPUExecutionProvider)", or the server's URL

    def logits(self, batch: np.ndarray | dict[str, np.ndarray]) -> np.ndarray: ...


class LocalTarget:
    def __init__(self, spec: str, repo: str | Path, device: str = "cpu") -> None:
        from maasctl.repository import ModelRepository, resolve_model
        from maasctl.runtime import load_model

        # No spinning: between runs this process decodes the next batch's images on the same few cores.
        self.model = load_model(resolve_model(spec, ModelRepository(repo)), device=device, allow_spinning=False)
        self.manifest = self.model.manifest
        self.name, self.version = self.model.name, str(self.model.version)
        self.where = f"local ({self.model.provider})"
        self._input = self.model.inputs[0].name
        self._output = scores_output(self.manifest)

    def logits(self, batch: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        try:
            feeds = batch if isinstance(batch, dict) else {self._input: batch}  # dict: a subword model's inputs
            return self.model.run(feeds, [self._output])[self._output]
        except Exception as exc:  # onnxruntime's own error types: the inputs did not suit the graph
            raise UsageError(f"onnxruntime could not run the batch: {exc}") from None


class RemoteTarget:
    """A model on a maasctl server, or on any Open Inference Protocol server (then tensor inputs only).

    Tensors travel with the binary tensor data extension both ways (a JSON header, then raw little-endian
    bytes), over one kept-alive connection. Only the standard library's http.client: it imports fast.
    """

    def __init__(self, spec: str, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        from urllib.parse import quote, urlsplit

        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--url {url!r}: give http://HOST:PORT or https://HOST:PORT")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.where = self.url
        self._scheme, self._netloc, self.timeout = parts.scheme, parts.netloc, timeout
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._conn: Any = None
        name, _, version = spec.partition(":")
        if version and not version.isdecimal():
            raise UsageError(f"model {spec!r}: the version after ':' must be a number, e.g. {name}:1")
        self._model_path = f"{parts.path.rstrip('/')}/v2/models/{quote(name, safe='')}" + (
            f"/versions/{version}" if version else ""
        )
        self.manifest = self._fetch_manifest()
        self.name = self.manifest.get("name", name)
        self.version = str(self.manifest["version"]) if self.manifest.get("version") is not None else (version or None)
        self._input = self.manifest["inputs"][0]["name"]
        self._output = scores_output(self.manifest)

    def _fetch_manifest(self) -> dict[str, Any]:
        status, _, body = self._request("GET", "/manifest")
        if status == 200:
            return json.loads(body)
        if status == 404:  # not a maasctl server, or no such model: plain OIP model metadata tells which
            status, _, body = self._request("GET", "")
            if status == 200:
                meta = json.loads(body)
                return {"inputs": meta["inputs"], "outputs": meta["outputs"], "labels": [], "name": meta.get("name")}
        raise self._failure(status, body, "GET", "/manifest")

    def logits(self, batch: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        from maasctl.protocol.v2 import HEADER_LENGTH, decode_response, encode_request

        body, headers = encode_request(batch if isinstance(batch, dict) else {self._input: batch}, [self._output])
        status, reply_headers, reply = self._request("POST", "/infer", body, headers)
        if status != 200:
            raise self._failure(status, reply, "POST", "/infer")
        try:
            return decode_response(reply, reply_headers.get(HEADER_LENGTH))[self._output]
        except (ValueError, KeyError, TypeError) as exc:
            raise Unavailable(f"{self.url}: unexpected infer response ({exc.__class__.__name__}: {exc})") from None

    def _failure(self, status: int, body: bytes, method: str, path: str) -> Exception:
        message = _error_message(body)
        where = f"{method} {self._scheme}://{self._netloc}{self._model_path}{path}"
        if status in (401, 403):
            hint = "" if self._headers else "; give the server's token with --token or MAASCTL_TOKEN"
            return Unavailable(f"{where}: the server refused access ({status}: {message}){hint}")
        if status in (400, 413):
            hint = "; try a smaller --batch-size" if status == 413 else ""
            return UsageError(f"server rejected the batch ({status}: {message}){hint}")
        return Unavailable(f"{where}: {status} {message}")

    def _request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, bytes]:
        import http.client

        retry = self._conn is not None  # a kept-alive connection may have been closed by the server while idle
        while True:
            if self._conn is None:
                cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
                self._conn = cls(self._netloc, timeout=self.timeout)
            try:
                self._conn.request(
                    method, self._model_path + path, body=body, headers={**self._headers, **(headers or {})}
                )
                response = self._conn.getresponse()
                return response.status, response.headers, response.read()
            except (http.client.HTTPException, OSError) as exc:
                self._conn.close()
                self._conn = None
                if retry and isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
                    retry = False
                    continue
                reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or exc.__class__.__name__
                raise Unavailable(f"cannot reach {self.url}: {reason}") from None


def _error_message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error") or body[:200].decode(errors="replace"))
    except Exception:
        return body[:200].decode(errors="replace").strip() or "(no message)"
