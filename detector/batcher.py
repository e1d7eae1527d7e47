"""Dynamic micro-batching for one loaded model: a bounded queue and one task that groups
requests into a single ``session.run`` per batch, off the event loop, with up to
``concurrency`` batches running at once (overlapping runs keep both cores busy, and are the
only parallelism a model with a static batch size of 1 gets)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from detector.engine import Engine
from detector.errors import InferenceFailed, ModelClosed, QueueFull
from detector.metrics import DetectorMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 64
    # Batches running at once; each takes one thread of the inference executor.
    concurrency: int = 1


@dataclass(frozen=True)
class InferResult:
    """One image's raw output and how it got it."""

    output: np.ndarray
    batch_size: int
    queue_ms: float
    inference_ms: float


@dataclass
class _Item:
    tensor: np.ndarray
    future: asyncio.Future[InferResult]
    enqueued: float


class Batcher:
    """Owned by one loaded model. Requests hold a slot from admission (before decoding) until
    their output is back, so memory is bounded by ``max_queue`` images whatever the load."""

    def __init__(
        self, engine: Engine, options: BatchingOptions, executor: Executor, metrics: DetectorMetrics, label: str
    ) -> None:
        self._engine = engine
        self._options = options
        self._executor = executor
        self._metrics = metrics
        self._label = label
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=options.max_queue)
        self._inflight: set[asyncio.Task[None]] = set()
        self._running_items: dict[asyncio.Task[None], list[_Item]] = {}
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._stopped = False
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Requests admitted and not yet answered (decoding, queued or running)."""
        return self._pending

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"batcher {self._label}")

    def _full(self) -> QueueFull:
        self._metrics.rejected.labels("queue_full").inc()
        return QueueFull(
            f"detector queue full ({self._pending} waiting); retry with backoff or add replicas",
            metadata={"max_queue": self._options.max_queue},
        )

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Holds one of ``max_queue`` slots for a request; raises :class:`QueueFull` when none is free."""
        if self._closing:
            raise ModelClosed(f"model {self._label} is being replaced or shut down; retry")
        if self._pending >= self._options.max_queue:
            raise self._full()
        self._pending += 1
        self._metrics.queue_depth.inc()
        self._idle.clear()
        try:
            yield
        finally:
            self._pending -= 1
            self._metrics.queue_depth.dec()
            if self._pending == 0:
                self._idle.set()

    async def infer(self, tensor: np.ndarray) -> InferResult:
        """Runs one preprocessed image [3, h, w] in the next batch; call inside :meth:`admit`."""
        if self._stopped:
            raise ModelClosed(f"model {self._label} was closed before this request ran; retry")
        future: asyncio.Future[InferResult] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Item(tensor, future, time.perf_counter()))
        except asyncio.QueueFull:
            raise self._full() from None
        return await future

    async def _collect(self) -> list[_Item]:
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self._options.max_wait_ms / 1000
        # A model with a static batch size runs that many at a time: a bigger batch would only queue behind itself.
        max_batch = min(self._options.max_batch_size, self._engine.static_batch or self._options.max_batch_size)
        while len(batch) < max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        # Requests cancelled while queued (client gone) are not worth a slot in the batch.
        return [item for item in batch if not item.future.done()]

    def _run_batch(self, tensors: list[np.ndarray], alone: bool) -> tuple[np.ndarray, float]:
        # Runs in the inference thread: stacking big tensors would stall the event loop.
        started = time.perf_counter()
        outputs = self._engine.run(np.stack(tensors), alone=alone)
        return outputs, time.perf_counter() - started

    async def _loop(self) -> None:
        slots = asyncio.Semaphore(self._options.concurrency)
        while True:
            await slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                slots.release()
                raise
            if not batch:
                slots.release()
                continue
            # A batch that starts while none runs may use every core; one that overlaps another shares them.
            task = asyncio.create_task(self._run(batch, slots, alone=not self._inflight))
            self._inflight.add(task)
            self._running_items[task] = batch
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._running_items.pop(task, None)

    async def _run(self, batch: list[_Item], slots: asyncio.Semaphore, alone: bool) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            outputs, seconds = await loop.run_in_executor(
                self._executor, self._run_batch, [item.tensor for item in batch], alone
            )
        except Exception as exc:
            log.exception("inference failed on %s for a batch of %d", self._label, len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(
                        InferenceFailed(f"inference failed on model {self._label}: {type(exc).__name__}: {exc}")
                    )
            return
        finally:
            slots.release()
        # A model with a static batch size ran the batch in chunks of that size.
        chunk = self._engine.static_batch or len(batch)
        for start in range(0, len(batch), chunk):
            self._metrics.batch_size.observe(min(chunk, len(batch) - start))
        self._metrics.inference_seconds.observe(seconds)
        for i, item in enumerate(batch):
            shared = min(chunk, len(batch) - i // chunk * chunk)
            if not item.future.done():
                item.future.set_result(
                    InferResult(outputs[i], shared, (started - item.enqueued) * 1000, seconds * 1000)
                )

    async def close(self, drain_timeout_s: float) -> None:
        """Stops admitting, lets admitted requests finish (up to the timeout), then stops the task."""
        self._closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), drain_timeout_s)
        except TimeoutError:
            log.warning(
                "model %s: %d requests still pending after %.1fs; failing them",
                self._label,
                self._pending,
                drain_timeout_s,
            )
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        leftovers = [item for items in self._running_items.values() for item in items]
        for task in list(self._inflight):
            task.cancel()
        while not self._queue.empty():
            leftovers.append(self._queue.get_nowait())
        for item in leftovers:
            if not item.future.done():
                item.future.set_exception(ModelClosed(f"model {self._label} closed before this request ran; retry"))
