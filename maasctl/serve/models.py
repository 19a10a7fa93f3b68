"""Which model versions the server runs: the version policy, loading and unloading, and polling the repository.

The repository on disk says what exists; this module decides what is served and keeps a state per version for
`POST /v2/repository/index` (Triton's repository extension). Loading (session creation and warm-up, seconds for a
large model) runs in a worker thread, so the event loop keeps serving meanwhile; the served set is only changed on
the event loop, one management operation at a time.

A version that fails to load (corrupt file, wrong hash) is reported and never replaces what is being served: with
the policy `latest`, version 2 keeps serving while version 3 is broken. A failed version is retried by an explicit
load, or by polling once its files change.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maasctl.drift import DriftMonitor
from maasctl.errors import MaasctlError, Unavailable, UsageError
from maasctl.protocol.errors import InvalidInput, NotFound
from maasctl.protocol.v2 import DATATYPES, TensorSignature
from maasctl.repository import ModelRepository
from maasctl.runtime import LoadedModel, load_model
from maasctl.serve.batching import BatchingConfig, ModelBatcher
from maasctl.serve.metrics import Metrics

log = logging.getLogger("maasctl.serve")

READY, UNAVAILABLE = "READY", "UNAVAILABLE"  # Triton's model states


class LoadFailed(InvalidInput):
    """400, as Triton answers a failed load: the request was understood, the model could not be loaded."""


@dataclass(frozen=True)
class VersionPolicy:
    """`latest` (the highest version), `latest:N` (the N highest) or `all`, as Triton's version_policy."""

    latest: int | None  # None: all versions

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        if text == "all":
            return cls(None)
        if text == "latest":
            return cls(1)
        head, _, count = text.partition(":")
        if head == "latest" and count.isdecimal() and int(count) >= 1:
            return cls(int(count))
        raise UsageError(f"version policy {text!r}: use latest, latest:N (the N highest versions) or all")

    def select(self, versions: list[int]) -> list[int]:
        ordered = sorted(versions)
        return ordered if self.latest is None else ordered[-self.latest :]

    def __str__(self) -> str:
        return "all" if self.latest is None else "latest" if self.latest == 1 else f"latest:{self.latest}"


@dataclass
class ServedVersion:
    model: LoadedModel
    signature: TensorSignature
    batcher: ModelBatcher


@dataclass(frozen=True)
class _Failure:
    reason: str
    fingerprint: tuple  # the version's files when it failed: polling retries only once they change


class ServedModels:
    def __init__(
        self, repo: ModelRepository, device: str, batching: BatchingConfig, metrics: Metrics, policy: VersionPolicy
    ) -> None:
        self.repo, self.device, self.batching, self.metrics, self.policy = repo, device, batching, metrics, policy
        self.served: dict[str, dict[int, ServedVersion]] = {}
        self.failed: dict[tuple[str, int], _Failure] = {}
        self.unloaded: set[str] = set()  # unloaded by request: polling leaves them alone until loaded again
        self.expected: set[str] = set()  # names readiness waits for: those at start-up and those loaded since
        self._lock = asyncio.Lock()  # one management operation at a time (binds to the loop on first use)

    # --- lookups (event loop) ------------------------------------------------------------------------------------

    def get(self, name: str, version: str | None = None) -> ServedVersion:
        versions = self.served.get(name)
        if not versions:
            why = self._why_not_served(name)
            raise NotFound(f"unknown model {name!r}" + (f": {why}" if why else ""))
        if version is None:
            return versions[max(versions)]
        served = versions.get(int(version)) if version.isdecimal() else None
        if served is None:
            loaded = ", ".join(map(str, sorted(versions)))
            raise NotFound(f"model {name!r} has no version {version!r} loaded (serving: {loaded})")
        return served

    def failure(self, name: str) -> str | None:
        """Why `name` has nothing to serve, when it was meant to."""
        if name in self.served or name not in self.expected:
            return None
        return self._why_not_served(name) or "not loaded"

    @property
    def ready(self) -> bool:
        return all(self.served.get(name) for name in self.expected)

    def readiness(self) -> dict[str, bool]:
        """Every model meant to be served (present at start, loaded since, or failing to load and still on disk; not
        those unloaded on purpose) -> whether it has a version serving: the `maasctl_model_ready` gauge."""
        failing = {name for name, _ in self.failed} & set(self.repo.names())
        names = (self.expected | set(self.served) | failing) - self.unloaded
        return {name: bool(self.served.get(name)) for name in names}

    def drift_monitors(self) -> list[DriftMonitor]:
        return [sv.batcher.drift for versions in self.served.values() for sv in versions.values() if sv.batcher.drift]

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every version on disk or in memory, with its state: `POST /v2/repository/index`."""
        rows = []
        for name in sorted(set(self.repo.names()) | set(self.served)):
            served, on_disk = self.served.get(name, {}), self.repo.versions(name)
            wanted = set(self.policy.select(on_disk))
            for version in sorted(set(on_disk) | set(served)):
                if version in served:
                    state, reason = READY, ""
                elif (name, version) in self.failed:
                    state, reason = UNAVAILABLE, self.failed[(name, version)].reason
                elif name in self.unloaded:
                    state, reason = UNAVAILABLE, "unloaded"
                elif version in wanted:
                    state, reason = UNAVAILABLE, "not loaded yet"
                else:
                    state, reason = UNAVAILABLE, f"not selected by the version policy {self.policy}"
                if state == READY or not ready_only:
                    rows.append({"name": name, "version": str(version), "state": state, "reason": reason})
        return rows

    # --- start-up (before the event loop runs) -------------------------------------------------------------------

    def load_all(self) -> None:
        for name in self.repo.names():
            self.expected.add(name)
            self._apply(name, self._prepare(name, retry_failed=True))

    # --- management (event loop) ---------------------------------------------------------------------------------

    async def load(self, name: str) -> list[int]:
        """Load or reload `name` per the version policy; the versions served afterwards. Raises LoadFailed when a
        version selected by the policy could not be loaded (what was serving before stays)."""
        async with self._lock:
            if not self.repo.versions(name):
                raise NotFound(
                    f"no model {name!r} in {self.repo.root} (models there: {', '.join(self.repo.names()) or 'none'})"
                )
            self.unloaded.discard(name)
            plan = await asyncio.to_thread(self._prepare, name, True)
            await self._apply_async(name, plan)
            if name in self.served:
                self.expected.add(name)
            failures = [f"version {v}: {self.failed[(name, v)].reason}" for v in plan.failed]
            if failures:
                serving = sorted(self.served.get(name, {}))
                still = f"; still serving version {', '.join(map(str, serving))}" if serving else "; nothing is served"
                raise LoadFailed(f"model {name!r} failed to load: {'; '.join(failures)}{still}")
            return sorted(self.served[name])

    async def unload(self, name: str) -> None:
        """Stop serving every version of `name`; requests already queued finish first."""
        async with self._lock:
            if name not in self.served and not self.repo.versions(name):
                raise NotFound(f"unknown model {name!r}")
            self.unloaded.add(name)
            self.expected.discard(name)
            await self._retire(name, list(self.served.get(name, {})))

    async def poll(self) -> None:
        """Bring the served set in line with the repository: new versions and models in, removed ones out."""
        async with self._lock:
            on_disk = set(self.repo.names())
            for name in sorted(set(self.served) - on_disk):
                log.info("model %s is gone from the repository: unloading it", name)
                self.expected.discard(name)
                await self._retire(name, list(self.served[name]))
            for name in sorted(on_disk - self.unloaded):
                plan = await asyncio.to_thread(self._prepare, name, False)
                if plan.loaded or plan.failed or plan.retire:
                    await self._apply_async(name, plan)
                    if name in self.served:
                        self.expected.add(name)

    async def close(self) -> None:
        for versions in self.served.values():
            for served in versions.values():
                await served.batcher.close()

    # --- the work ------------------------------------------------------------------------------------------------

    def _prepare(self, name: str, retry_failed: bool) -> _Plan:
        """Load (in whatever thread calls it) the versions the policy wants and that are not served yet."""
        on_disk = self.repo.versions(name)
        wanted = self.policy.select(on_disk)
        served = self.served.get(name, {})
        plan, still_broken = _Plan(), False
        for version in wanted:
            if version in served:
                continue
            fingerprint = _fingerprint(self.repo, name, version)
            known = self.failed.get((name, version))
            if known is not None and not retry_failed and known.fingerprint == fingerprint:
                still_broken = True  # the same broken files: do not pay for loading them on every poll
                continue
            try:
                plan.loaded[version] = self._load_version(name, version)
            except MaasctlError as exc:
                plan.failed[version] = _Failure(str(exc), fingerprint)
        # Retire what the policy no longer wants, but only once every wanted version is in: a failed new version
        # must leave the serving one in place.
        if not plan.failed and not still_broken:
            plan.retire = [v for v in served if v not in wanted]
        return plan

    def _load_version(self, name: str, version: int) -> ServedVersion:
        # No spinning: idle onnxruntime threads would busy-wait on the cores the event loop needs
        # (measured on 2 cores: ~650 µs of CPU per request at 16 connections, half the throughput).
        model = load_model(self.repo.get(name, version), self.device, allow_spinning=False)
        try:
            _warm_up(model)
        except Exception as exc:  # onnxruntime's own error types: a model that loads but cannot run
            raise Unavailable(
                f"{model.name} version {version}: the warm-up inference failed: {str(exc).strip().splitlines()[0]}"
            ) from None
        batcher = ModelBatcher(model, self.batching, self.metrics)
        batcher.drift = DriftMonitor.for_model(name, version, model.manifest)
        return ServedVersion(model, TensorSignature(model.inputs, model.outputs), batcher)

    def _apply(self, name: str, plan: _Plan) -> list[ServedVersion]:
        """Make the plan's changes to the served set (no await inside: requests see the old set or the new one)."""
        for version, failure in plan.failed.items():
            self.failed[(name, version)] = failure
            log.error("model %s version %d failed to load: %s", name, version, failure.reason)
        versions = self.served.setdefault(name, {})
        for version, served in plan.loaded.items():
            self.failed.pop((name, version), None)
            versions[version] = served
            batcher, model = served.batcher, served.model
            max_batch = self.batching.max_batch_size if batcher.batchable else 1
            self.metrics.model_loaded(name, version, model.provider, max_batch)
            batching = f"dynamic batching up to {max_batch} rows" if batcher.batchable else "no batching"
            log.info("model %s version %d ready on %s, %s", name, version, model.provider, batching)
        retired = [versions.pop(v) for v in plan.retire if v in versions]
        if not versions:
            del self.served[name]
        return retired

    async def _apply_async(self, name: str, plan: _Plan) -> None:
        for served in self._apply(name, plan):
            await self._drain(served)

    async def _retire(self, name: str, versions: list[int]) -> None:
        await self._apply_async(name, _Plan(retire=versions))

    async def _drain(self, served: ServedVersion) -> None:
        # Out of the served set already, so nothing new reaches this batcher (a request picks its version and
        # enqueues without an await in between); let what it holds finish, then stop its worker.
        model = served.model
        await served.batcher.drain()
        self.metrics.model_unloaded(model.name, model.version)
        log.info("model %s version %d unloaded", model.name, model.version)

    def _why_not_served(self, name: str) -> str:
        if name in self.unloaded:
            return f"it was unloaded (POST /v2/repository/models/{name}/load serves it again)"
        reasons = [f.reason for (n, _), f in sorted(self.failed.items()) if n == name]
        return f"it failed to load ({reasons[-1]})" if reasons else ""


@dataclass
class _Plan:
    loaded: dict[int, ServedVersion] = field(default_factory=dict)  # newly loaded and warmed up
    failed: dict[int, _Failure] = field(default_factory=dict)
    retire: list[int] = field(default_factory=list)  # served versions to stop serving


def _fingerprint(repo: ModelRepository, name: str, version: int) -> tuple:
    folder = repo.root / name / str(version)
    try:
        return tuple(
            sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder) if e.is_file())
        )
    except OSError:
        return ()


def _warm_up(model: LoadedModel) -> None:
    """One inference at load, so the first request does not pay for onnxruntime's lazy initialisation."""
    feeds = {}
    for spec in model.inputs:
        shape = [1 if d < 0 else d for d in spec.shape]
        feeds[spec.name] = np.zeros(shape, dtype=DATATYPES[spec.datatype])
    model.run(feeds)
