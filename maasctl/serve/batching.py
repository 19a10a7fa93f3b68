"""Dynamic batching, one queue per model (Triton's dynamic batcher, simplified).

Requests wait in their model's queue. One worker per model takes the oldest request and, when the model can be
batched, every queued request whose inputs have the same non-batch shapes, up to `max_batch_size` rows; when that
is less than a full batch it waits at most `max_queue_delay_ms` after the oldest request arrived for more. The
batch's inputs are concatenated along axis 0, run once in onnxruntime in a thread (the event loop keeps serving)
and the outputs are split back by each request's row count. One batch per model executes at a time; the next one
gathers meanwhile, which is where batching pays under load.

A model can be batched when every input and output has a dynamic first dimension (export's batch axis). Other
models, and requests that cannot join one (inputs with different row counts, zero rows, or more rows than
`max_batch_size`), run alone. More than `max_queue_size` requests waiting gets 503 at once, not a longer queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from maasctl.protocol.errors import InferenceError, InvalidInput, NotReady
from maasctl.runtime import LoadedModel
from maasctl.serve.metrics import Metrics

log = logging.getLogger("maasctl.serve")


TIMER_RESOLUTION_S = 0.001


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32  # rows per execution; 1 turns batching off
    # How long a lone request waits for company. 0 (Triton's default) still batches: requests that queue while
    # the previous batch runs go together. A wait only pays when compute is cheap next to the arrival gap.
    max_queue_delay_ms: float = 0.0
    max_queue_size: int = 256  # queued requests per model before 503
    request_timeout_s: float | None = None  # queue + execution; None: wait as long as it takes


class Overloaded(NotReady):
    """503: the model's queue is full. Retry later, or add capacity."""


class TimedOut(InferenceError):
    status = 504


class BackendError(InvalidInput):
    """400: onnxruntime refused values that the signature check could not see."""


class _Request:
    """One queued request (a plain class with slots, not a dataclass: one is made per request)."""

    __slots__ = ("future", "inputs", "key", "outputs", "queued_at", "rows")

    def __init__(
        self,
        inputs: dict[str, np.ndarray],
        outputs: list[str] | None,
        rows: int,
        key: Hashable | None,
        future: asyncio.Future,
    ) -> None:
        self.inputs, self.outputs, self.rows, self.future = inputs, outputs, rows, future
        self.key = key  # requests with equal keys can share a batch; None: runs alone
        # When it was queued: for the queue-time histogram and the queue delay (uvloop's clock is cached at 1 ms).
        self.queued_at = time.perf_counter()


class ModelBatcher:
    def __init__(self, model: LoadedModel, config: BatchingConfig, metrics: Metrics) -> None:
        self.model = model
        self.config = config
        self.batchable = config.max_batch_size > 1 and _batchable(model)
        self._output_order = [o.name for o in model.outputs]
        self.labels = labels = (model.name, str(model.version))
        self.request_tally = metrics.request_tally(*labels)  # the transports' successful requests (dataplane.infer)
        self._m_count = metrics.count.labels(*labels)
        self._m_exec = metrics.exec_count.labels(*labels)
        self._m_pending = metrics.bind_pending(*labels, lambda: len(self._pending))  # None: read at each scrape
        self._m_queue = metrics.queue_tally(*labels)  # each request's seconds in the queue, appended
        self._m_compute = metrics.compute_seconds.labels(*labels)  # sliced runs, in the model's thread
        self._m_executed = metrics.compute_tally(*labels)  # each batch's seconds (and so the executions), on the loop
        self._pending: deque[_Request] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: list[_Request] = []
        self._thread: ModelThread | None = None  # runs the model's batches, started with the first
        self._to_observe: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []  # for the drift window
        self.drift: Any = None  # a maasctl.drift.DriftMonitor, set when the manifest has training statistics

    def infer(
        self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> Awaitable[dict[str, np.ndarray]]:
        """The model's outputs for these inputs (in `outputs` order, or the model's), once its batch has run: `await
        batcher.infer(...)`. Queues the request (503 when the queue is full). Without a timeout that awaits the
        request's future itself, no coroutine around it (one frame less to create and resume on every request)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker.done():  # the first request, a new loop, or a worker that ended
            self._ensure_worker(loop)
        pending = self._pending
        if len(pending) >= self.config.max_queue_size:
            self.raise_if_full()
        rows, key = self._rows_and_key(inputs)
        request = _Request(inputs, outputs, rows, key, loop.create_future())
        pending.append(request)
        if self._m_pending is not None:
            self._m_pending.set(len(pending))
        assert self._arrived is not None
        self._arrived.set()
        timeout = self.config.request_timeout_s
        if timeout is None:
            return request.future
        return self._infer_within(request, timeout)

    async def _infer_within(self, request: _Request, timeout: float) -> dict[str, np.ndarray]:
        try:
            return await asyncio.wait_for(request.future, timeout)  # cancels the future when time is up
        except asyncio.TimeoutError:
            where = "executing" if request in self._running else "in the queue"
            self._forget(request)
            raise TimedOut(
                f"model {self.model.name!r}: no result within {timeout:g} s (--request-timeout-s); it was still {where}"
            ) from None

    def raise_if_full(self) -> None:
        """503 when the queue is full; called before decoding too, so an overloaded server refuses cheaply."""
        if len(self._pending) >= self.config.max_queue_size:
            raise Overloaded(
                f"model {self.model.name!r} is overloaded: {len(self._pending)} requests already queued "
                f"(--max-queue-size {self.config.max_queue_size}); retry later"
            )

    async def drain(self, poll_s: float = 0.005) -> None:
        """Finish what is queued or executing, then stop (an unload: no new requests reach this batcher)."""
        while self._pending or self._running:
            await asyncio.sleep(poll_s)
        await self.close()

    async def close(self) -> None:
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._thread is not None:
            self._thread.stop()  # a batch still running in it finishes; nobody waits for it
            self._thread = None

    # --- the worker ---------------------------------------------------------------------------------------------

    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._worker is not None and not self._worker.done() and self._loop is loop:
            return
        # First request, or a new event loop (an app served again): start afresh on this loop.
        self._loop, self._arrived, self._pending = loop, asyncio.Event(), deque()
        self._worker = loop.create_task(self._work(), name=f"maasctl-batcher-{self.model.name}")

    def _forget(self, request: _Request) -> None:
        try:
            self._pending.remove(request)
        except ValueError:
            return  # already taken into a batch
        if self._m_pending is not None:
            self._m_pending.set(len(self._pending))
        if self._arrived is not None:
            self._arrived.set()  # the worker may be waiting on its behalf

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._arrived is not None
        delay = self.config.max_queue_delay_ms / 1000
        try:
            while True:
                while self._pending and self._pending[0].future.done():  # timed out or cancelled while queued
                    self._pending.popleft()
                if not self._pending:
                    if self._m_pending is not None:
                        self._m_pending.set(0)
                    self._arrived.clear()
                    await self._arrived.wait()
                    continue
                batch, full = self._gather(self._pending[0])
                # uvloop's timers fire with 1 ms resolution, often early: waiting out the last millisecond would
                # re-arm the timer again and again (measured: ~18 worker wake-ups per request), so stop short.
                if (
                    not full
                    and (left := delay - (time.perf_counter() - self._pending[0].queued_at)) > TIMER_RESOLUTION_S
                ):
                    self._arrived.clear()
                    wake = loop.call_later(left, self._arrived.set)
                    try:
                        await self._arrived.wait()  # a new request, a timed-out one, or the deadline
                    finally:
                        wake.cancel()
                    continue  # gather again from the (changed) queue
                self._take(batch)
                if self._m_pending is not None:
                    self._m_pending.set(len(self._pending))
                await self._execute(batch, loop)
        finally:
            for request in [*self._running, *self._pending]:
                request.future.cancel()

    def _take(self, batch: list[_Request]) -> None:
        """Remove the batch's requests from the queue (arrival order, so usually its first ones: popped, no copy)."""
        pending = self._pending
        if pending[len(batch) - 1] is batch[-1]:  # the batch is in queue order, so it is the first len(batch) ones
            for _ in batch:
                pending.popleft()
            return
        taken = {id(r) for r in batch}
        self._pending = deque(r for r in pending if id(r) not in taken)

    def _gather(self, head: _Request) -> tuple[list[_Request], bool]:
        """The oldest request and the queued requests that can join it, in arrival order; and whether it is full."""
        if head.key is None:
            return [head], True
        batch, rows, limit = [head], head.rows, self.config.max_batch_size
        for request in itertools.islice(self._pending, 1, None):
            if rows >= limit:
                break
            if request.key != head.key or request.future.done():
                continue
            if rows + request.rows > limit:
                return batch, True  # the next one does not fit: run what we have, it heads the next batch
            batch.append(request)
            rows += request.rows
        return batch, rows >= limit

    async def _execute(self, batch: list[_Request], loop: asyncio.AbstractEventLoop) -> None:
        # No request in `batch` is done: _gather left those out, and nothing ran since (no await in between).
        now = time.perf_counter()
        self._m_queue.add_all([now - r.queued_at for r in batch])
        self._running = batch
        try:
            await self._run(batch)
        finally:
            self._running = []
        for observed in self._to_observe:
            # The drift window takes the batch on the event loop, queued behind the requests the batch has just
            # answered: in the model's thread it held the GIL while those requests waited for their answers.
            loop.call_soon(self.drift.observe, *observed)
        self._to_observe.clear()

    async def _run(self, batch: list[_Request]) -> None:
        if not batch:
            return
        try:
            if len(batch) == 1:
                feeds = batch[0].inputs
            else:
                feeds = {name: np.concatenate([r.inputs[name] for r in batch]) for name in batch[0].inputs}
            names = self._output_names(batch)
            if self._thread is None:
                self._thread = ModelThread(f"maasctl-{self.model.name}")
            rows = sum([r.rows for r in batch])
            results, seconds = await self._thread.run(self._timed_run, feeds, names, rows)
            if seconds is not None:  # one execution (a sliced one counted itself, slice by slice)
                self._m_executed.add(seconds)
                self._m_count.inc(rows)
                if self.drift is not None:
                    self._to_observe.append((feeds, results))
        except Exception as exc:
            if len(batch) > 1:
                # One request's values may have spoiled the batch: run each alone, so each gets its own answer.
                for request in batch:
                    await self._run([request])
                return
            _settle(batch[0], exc=BackendError(f"model {self.model.name!r} rejected the input: {_first_line(exc)}"))
            return
        if len(batch) == 1:
            _settle(batch[0], self._select(results, batch[0].outputs))
            return
        if any(a.ndim == 0 or a.shape[0] != rows for a in results.values()):
            # The model's first output dimension is not the batch axis after all: stop batching it.
            log.warning(
                "model %s: outputs are not batched along axis 0; running its requests one by one", self.model.name
            )
            self.batchable = False
            for request in batch:
                await self._run([request])
            return
        start, order = 0, self._output_order
        for request in batch:  # views into the batch's outputs, no copies; written out: it runs for every request
            end = start + request.rows
            names = request.outputs or order
            if not request.future.done():  # else the client's wait timed out meanwhile; nobody reads this
                if len(names) == 1:
                    request.future.set_result({names[0]: results[names[0]][start:end]})
                else:
                    request.future.set_result({name: results[name][start:end] for name in names})
            start = end

    def _timed_run(
        self, feeds: dict[str, np.ndarray], names: list[str], rows: int
    ) -> tuple[dict[str, Any], float | None]:
        """The batch's outputs and the seconds its one execution took; None when it ran in slices (more rows than
        a batch), which count themselves. Only the model runs here: any other Python in this thread holds the GIL
        while the event loop waits for it, so the metrics are taken on the loop."""
        limit = self.config.max_batch_size
        if self.batchable and rows > limit and all(a.ndim and a.shape[0] == rows for a in feeds.values()):
            return self._run_in_slices(feeds, names, rows, limit), None
        start = time.perf_counter()
        results = self.model.run(feeds, names)
        return results, time.perf_counter() - start

    def _run_in_slices(
        self, feeds: dict[str, np.ndarray], names: list[str], rows: int, limit: int
    ) -> dict[str, np.ndarray]:
        """A request of more rows than a batch, run `limit` rows at a time into preallocated outputs. One run of
        100,000 digits rows took onnxruntime's arena to 1.9 GB, and the arena keeps what it once held; slices
        bound the model's working memory by the batch size, whatever a client sends."""
        out: dict[str, np.ndarray] = {}
        for begin in range(0, rows, limit):
            end = min(begin + limit, rows)
            start = time.perf_counter()
            part = self.model.run({name: a[begin:end] for name, a in feeds.items()}, names)
            self._m_compute.observe(time.perf_counter() - start)
            self._m_exec.inc()
            for name, array in part.items():
                if array.ndim == 0 or array.shape[0] != end - begin:
                    raise ValueError(f"output {name!r} is not batched along axis 0; send at most {limit} rows")
                if name not in out:
                    out[name] = np.empty((rows, *array.shape[1:]), dtype=array.dtype)
                out[name][begin:end] = array
        self._m_count.inc(rows)
        return out

    def _output_names(self, batch: list[_Request]) -> list[str]:
        for request in batch:  # usually the first one asks for all of them (a loop: no generator per batch)
            if request.outputs is None:
                return list(self._output_order)
        wanted = {name for r in batch for name in r.outputs or ()}
        return [name for name in self._output_order if name in wanted]

    def _select(self, results: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        return {name: results[name] for name in (outputs or self._output_order)}

    def _rows_and_key(self, inputs: dict[str, np.ndarray]) -> tuple[int, Hashable | None]:
        if not self.batchable:
            return 1, None
        if len(inputs) == 1:  # the common case: one input, no set of first dimensions, no sorting
            ((name, a),) = inputs.items()
            rows = a.shape[0] if a.ndim else -1
            if 0 < rows <= self.config.max_batch_size:
                return rows, ((name, a.dtype, a.shape[1:]),)
            return max(rows, 1), None
        firsts = {a.shape[0] if a.ndim else -1 for a in inputs.values()}
        rows = firsts.pop() if len(firsts) == 1 else -1
        if rows <= 0 or rows > self.config.max_batch_size:
            return max(rows, 1), None
        return rows, tuple(sorted((name, a.dtype, a.shape[1:]) for name, a in inputs.items()))


class ModelThread:
    """The thread that runs one model's batches, one at a time (its batcher awaits each): always the same warm
    thread, and a batch is handed over and answered with one queue put and one `call_soon_threadsafe`. A
    ThreadPoolExecutor (what `run_in_executor` and `asyncio.to_thread` use) made each batch a concurrent future
    with its own condition and lock, a pool-size check under a semaphore and a chained asyncio future: about 60
    Python opcodes a request on the event loop at 8 requests a batch, and more Python in this thread holding
    the GIL the event loop waits for."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        # A daemon thread: one blocked in a stuck model must not keep the process from exiting; `stop` ends it.
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def run(self, fn: Any, *args: Any) -> asyncio.Future:
        """`fn(*args)` in the thread, after the batches before it; await the result on the calling event loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def stop(self) -> None:
        self._jobs.put(None)  # after the batches already handed over

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            try:
                result, exc = fn(*args), None
            except BaseException as error:  # handed to the awaiting coroutine, as an executor would
                result, exc = None, error
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting for the result
                loop.call_soon_threadsafe(_resolve, future, result, exc)
            del job, future, result, exc  # not kept alive while the thread waits for the next batch


def _resolve(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():  # the awaiting coroutine was cancelled meanwhile (a shutdown)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _batchable(model: LoadedModel) -> bool:
    tensors = [*model.inputs, *model.outputs]
    return bool(model.inputs) and all(len(t.shape) >= 1 and t.shape[0] < 0 for t in tensors)


def _settle(request: _Request, result: Any = None, exc: BaseException | None = None) -> None:
    if request.future.done():  # the client's wait timed out meanwhile; nobody reads this
        return
    if exc is not None:
        request.future.set_exception(exc)
    else:
        request.future.set_result(result)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__
