"""Per-model dynamic micro-batching.

Concurrent requests for one model wait at most `max_wait_ms` for company, are stacked along
axis 0 into one tensor (up to `max_batch` rows), run once, and get their own rows back.
The queue is bounded: past `max_queue` waiting requests the caller gets `Overloaded` (429)
at once instead of a growing backlog.

A lone request need not travel through the queue at all: `try_run`, called from the worker
thread that has just preprocessed it, runs it there and then when no run is in flight and
nothing is queued (one thread hop per request instead of two). Inline runs and batches share
the `concurrency` run slots, so batching under load is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.errors import DeadlineExceeded, ModelUnavailable, Overloaded

log = logging.getLogger("service.batching")

RunFn = Callable[[np.ndarray], Sequence[np.ndarray]]


@dataclass(frozen=True)
class BatchResult:
    """outputs: the model outputs for this request's rows only (each (n, ...)).
    batch_size: rows in the batch this request ran in (its own plus others')."""

    outputs: list[np.ndarray]
    queue_ms: float
    run_ms: float
    batch_size: int


@dataclass
class _Pending:
    tensor: np.ndarray
    future: asyncio.Future[BatchResult]
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(
        self,
        run: RunFn,
        *,
        name: str,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        concurrency: int = 1,
    ) -> None:
        self._run = run
        self.name = name
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._carry: _Pending | None = None
        # `concurrency` batches may run at once (one thread each). ORT parallelises inside a
        # run, but not perfectly: a second run in flight fills the gaps (serial ops, thread
        # wake-ups) where batching alone does not help. While every slot is busy the queue
        # grows, so the next batch is fuller.
        self.concurrency = concurrency
        # Run slots, taken by batches (event loop) and inline runs (worker threads) alike.
        self._gate = threading.Lock()
        self._active = 0  # runs in flight, under _gate
        self._slot_wanted = False  # the batch loop waits for a slot, under _gate
        self._slot_freed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix=f"ort-{name}"
        )
        self._inflight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_rows = 0
        self.batches_run = 0
        # (rows, run seconds, each request's queue wait in seconds): metrics hook
        self.observer: Callable[[int, float, list[float]], None] | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize() + (1 if self._carry else 0)

    def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._batches(), name=self.name)

    def try_run(self, tensor: np.ndarray) -> BatchResult | None:
        """From a worker thread: run `tensor` ((n, ...) rows) right here when a run slot is
        free and no request is queued, else None (then `submit` it). Saves the hop to the
        batcher's thread and back for a lone client; under load the queue is never empty,
        so requests still batch."""
        with self._gate:
            if (
                self._closing
                or self._task is None
                or self._active >= self.concurrency
                or self._carry is not None
                or self._queue.qsize()  # a deque's length: safe to read from any thread
                or tensor.shape[0] > self.max_batch
            ):
                return None
            self._active += 1
        started = time.perf_counter()
        try:
            outputs = list(self._run(tensor))
        except Exception:
            log.exception("model %s failed on a batch of %d", self.name, tensor.shape[0])
            raise
        finally:
            self._release_slot(from_loop=False)
        run_s = time.perf_counter() - started
        self._ran(tensor.shape[0], run_s, [0.0])
        return BatchResult(outputs, queue_ms=0.0, run_ms=run_s * 1000, batch_size=tensor.shape[0])

    async def _acquire_slot(self) -> None:
        while True:
            with self._gate:
                if self._active < self.concurrency:
                    self._active += 1
                    self._slot_wanted = False
                    return
                self._slot_wanted = True
                self._slot_freed.clear()
            await self._slot_freed.wait()

    def _release_slot(self, *, from_loop: bool) -> None:
        with self._gate:
            self._active -= 1
            wake = self._slot_wanted
        if wake:
            if from_loop:
                self._slot_freed.set()
            elif self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._slot_freed.set)

    def _ran(self, rows: int, run_s: float, waits_s: list[float]) -> None:
        with self._gate:
            self.batches_run += 1
            self._last_rows = rows
        if self.observer is not None:
            self.observer(rows, run_s, waits_s)

    async def submit(self, tensor: np.ndarray, timeout: float | None = None) -> BatchResult:
        """tensor: (n, ...) rows for one request; n <= max_batch. Past `timeout` seconds the
        request is dropped from the queue (or its result ignored) and DeadlineExceeded raised."""
        if self._closing or self._task is None:
            raise ModelUnavailable(
                f"model {self.name} is not serving", headers={"Retry-After": "1"}
            )
        if tensor.shape[0] > self.max_batch:
            raise ValueError(f"{tensor.shape[0]} rows exceed max_batch {self.max_batch}")
        if self.depth >= self.max_queue:
            raise Overloaded(
                f"model {self.name} has {self.depth} requests waiting; retry shortly",
                headers={"Retry-After": "1"},
            )
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(tensor, future))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"model {self.name} did not answer within {timeout:g} s; retry later",
                headers={"Retry-After": "2"},
            ) from None

    async def _next_batch(self) -> list[_Pending]:
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, rows = [first], first.tensor.shape[0]
        # Waiting for company only pays under concurrency: a lone client (queue empty, last
        # batch a single request) runs at once instead of paying max_wait on every request.
        busy = not self._queue.empty() or self._last_rows > first.tensor.shape[0]
        deadline = time.perf_counter() + (self.max_wait if busy else 0.0)
        while rows < self.max_batch:
            timeout = deadline - time.perf_counter()
            try:
                item = (
                    self._queue.get_nowait()
                    if timeout <= 0
                    else await asyncio.wait_for(self._queue.get(), timeout)
                )
            except (asyncio.QueueEmpty, TimeoutError):
                break
            fits = rows + item.tensor.shape[0] <= self.max_batch
            if not fits or item.tensor.shape[1:] != first.tensor.shape[1:]:
                self._carry = item  # different size: it leads the next batch
                break
            batch.append(item)
            rows += item.tensor.shape[0]
        return batch

    async def _batches(self) -> None:
        while True:
            if self._carry is None:  # wait for work without holding a slot (see try_run)
                self._carry = await self._queue.get()
            await self._acquire_slot()  # meanwhile more requests queue up for this batch
            try:
                batch = await self._next_batch()
            except BaseException:
                self._release_slot(from_loop=True)
                raise
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            live = [p for p in batch if not p.future.done()]  # a cancelled client frees its slot
            if live:
                await self._execute(live)
        finally:
            self._release_slot(from_loop=True)

    async def _execute(self, live: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        stacked = (
            live[0].tensor if len(live) == 1 else np.concatenate([p.tensor for p in live], axis=0)
        )
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, self._run, stacked)
        except Exception as exc:  # deliver the failure to every waiter, keep serving
            log.exception("model %s failed on a batch of %d", self.name, stacked.shape[0])
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        run_ms = (time.perf_counter() - started) * 1000
        self._ran(stacked.shape[0], run_ms / 1000, [started - p.enqueued for p in live])
        offset = 0
        for p in live:
            n = p.tensor.shape[0]
            if not p.future.done():
                p.future.set_result(
                    BatchResult(
                        outputs=[o[offset : offset + n] for o in outputs],
                        queue_ms=(started - p.enqueued) * 1000,
                        run_ms=run_ms,
                        batch_size=stacked.shape[0],
                    )
                )
            offset += n

    async def close(self, drain_timeout: float = 10.0) -> None:
        """Stop taking work, let queued requests finish (up to drain_timeout), then stop."""
        self._closing = True
        deadline = time.perf_counter() + drain_timeout
        while (self.depth or self._active) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._task = None
        self._executor.shutdown(wait=True)
