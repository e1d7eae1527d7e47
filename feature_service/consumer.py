"""One consumer-group loop: poll a batch, prepare it, store it (retrying outages with backoff,
never committing meanwhile), then commit its offsets; the next batch is polled and prepared
while the previous one is stored. A stop finishes the batch in hand.

A failure that is not an outage (the data, not a store, is the problem) is retried
``max_store_attempts`` times; then the handler isolates the batch: it stores its records one
by one and dead-letters those that still fail, with the reason, so the partition moves on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from feature_service.db import is_transient
from feature_service.metrics import FeatureMetrics
from kit.backoff import Backoff, wait_event

log = logging.getLogger(__name__)

PreparedT = TypeVar("PreparedT")
Batches = dict[TopicPartition, list[ConsumerRecord]]


def _rewind(consumer: AIOKafkaConsumer, batches: Batches) -> None:
    """Reads ``batches`` again from their first records (on partitions still ours)."""
    for tp, recs in batches.items():
        if recs and tp in consumer.assignment():
            consumer.seek(tp, recs[0].offset)


class BatchHandler(Protocol[PreparedT]):
    async def prepare(self, records: list[ConsumerRecord]) -> PreparedT:
        """CPU work on the records (parse, validate); touches no store, so it is done once."""
        ...

    async def store(self, prepared: PreparedT) -> None:
        """Makes the batch's effects durable; idempotent, so it is retried after a failure."""
        ...

    async def isolate(self, prepared: PreparedT, reason: str) -> None:
        """After repeated failures that are not outages: stores the records one at a time and
        dead-letters those that fail alone (with ``reason``); raises only for an outage."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...


class ConsumerLoop(Generic[PreparedT]):
    def __init__(
        self,
        *,
        name: str,
        make_consumer: Callable[[], AIOKafkaConsumer],
        handler: BatchHandler[PreparedT],
        batch_size: int,
        poll_timeout_ms: int,
        backoff: Backoff,
        metrics: FeatureMetrics,
        before_start: Callable[[], Awaitable[None]] | None = None,
        max_store_attempts: int = 5,
    ) -> None:
        self.name = name
        self._make_consumer = make_consumer
        self._handler = handler
        self._batch_size = batch_size
        self._poll_timeout_ms = poll_timeout_ms
        self._backoff = backoff
        self._metrics = metrics
        self._before_start = before_start
        self._max_store_attempts = max_store_attempts
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"consumer-{self.name}")

    async def stop(self) -> None:
        """Finishes (and commits) the batch in hand, then leaves the group."""
        self._stopping.set()
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _pause(self, delay_s: float) -> bool:
        """Sleeps ``delay_s`` unless asked to stop first; False when stopping."""
        return not await wait_event(self._stopping, delay_s)

    async def _run(self) -> None:
        consumer = await self._connect()
        if consumer is None:
            return
        log.info("consumer %s started", self.name)
        # The batch being stored and committed while the next one is polled and prepared: decoding
        # (CPU) overlaps the writes (I/O); commits still go strictly in order, one batch at a time.
        storing: tuple[asyncio.Task[bool], Batches] | None = None
        try:
            while not self._stopping.is_set():
                try:
                    batches = await consumer.getmany(timeout_ms=self._poll_timeout_ms, max_records=self._batch_size)
                except KafkaError as exc:
                    log.warning("consumer %s: poll failed, retrying: %s", self.name, exc)
                    await self._pause(self._backoff.initial_s)
                    continue
                # Records polled after a stop was asked are not handled: the next owner reads them.
                if not batches or self._stopping.is_set():
                    if storing is not None and storing[0].done():
                        await self._settle(consumer, storing)
                        storing = None
                    continue
                started = time.perf_counter()
                records = [r for tp in sorted(batches) for r in batches[tp]]
                try:
                    prepared = await self._handler.prepare(records)
                except Exception:
                    log.exception("consumer %s: preparing a batch failed; reading it again", self.name)
                    _rewind(consumer, batches)
                    await self._pause(self._backoff.max_s)
                    continue
                if storing is not None:
                    committed = await self._settle(consumer, storing)
                    storing = None
                    if not committed or self._stopping.is_set():
                        continue  # rewound to the previous batch (or stopping): this one is read again
                task = asyncio.create_task(self._store_and_commit(consumer, batches, prepared, records, started))
                storing = (task, batches)
        finally:
            if storing is not None:
                await storing[0]  # a stop finishes the batch in hand
            await self._handler.close()
            await consumer.stop()
            log.info("consumer %s stopped", self.name)

    async def _settle(self, consumer: AIOKafkaConsumer, storing: tuple[asyncio.Task[bool], Batches]) -> bool:
        """Waits for the batch in hand; True when it was committed. When it was not, rewinds to it,
        so the records polled after it are read again too."""
        task, batches = storing
        if await task:
            return True
        _rewind(consumer, batches)
        if not self._stopping.is_set():
            await self._pause(self._backoff.max_s)
        return False

    async def _connect(self) -> AIOKafkaConsumer | None:
        delays = self._backoff.delays()
        while not self._stopping.is_set():
            consumer = self._make_consumer()
            try:
                if self._before_start is not None:
                    await self._before_start()
                await self._handler.open()
                await consumer.start()
                return consumer
            except (KafkaError, OSError) as exc:
                delay = next(delays)
                log.warning("consumer %s: Kafka not reachable, retrying in %.1fs: %s", self.name, delay, exc)
                await consumer.stop()
                await self._handler.close()
                if not await self._pause(delay):
                    break
        return None

    async def _store_and_commit(
        self,
        consumer: AIOKafkaConsumer,
        batches: Batches,
        prepared: PreparedT,
        records: list[ConsumerRecord],
        started: float,
    ) -> bool:
        """Stores the batch (retrying outages) and commits its offsets; False when it did not commit."""
        try:
            return await self._store_then_commit(consumer, batches, prepared, records, started)
        except Exception:
            log.exception("consumer %s: storing a batch failed; reading it again", self.name)
            return False

    async def _store_then_commit(
        self,
        consumer: AIOKafkaConsumer,
        batches: Batches,
        prepared: PreparedT,
        records: list[ConsumerRecord],
        started: float,
    ) -> bool:
        delays = self._backoff.delays()
        failures = 0
        reason = ""
        while True:
            try:
                if failures >= self._max_store_attempts:
                    await self._handler.isolate(prepared, reason)
                else:
                    await self._handler.store(prepared)
                break
            except Exception as exc:
                self._metrics.store_retries.labels(self.name).inc()
                delay = next(delays)
                if is_transient(exc) or isinstance(exc, KafkaError):
                    log.warning("consumer %s: a store is down, retrying the batch in %.1fs: %s", self.name, delay, exc)
                elif failures >= self._max_store_attempts:
                    # Isolating failed without an outage (a bug, or the DLQ refuses): nothing else is safe.
                    log.exception("consumer %s: isolating a failing batch failed, retrying in %.1fs", self.name, delay)
                else:
                    failures += 1
                    reason = f"failed {failures} times: {type(exc).__name__}: {exc}"
                    # Not an outage, yet nothing is committed that is not stored: retry and say so loudly.
                    log.exception(
                        "consumer %s: storing a batch failed (%d of %d attempts), retrying in %.1fs",
                        self.name,
                        failures,
                        self._max_store_attempts,
                        delay,
                    )
                    if failures >= self._max_store_attempts:
                        self._metrics.batches_isolated.labels(self.name).inc()
                        log.error(
                            "consumer %s: a batch of %d records failed %d times without an outage; storing its "
                            "records one by one, those that fail alone go to the dead-letter topic",
                            self.name,
                            len(records),
                            failures,
                        )
                if not await self._pause(delay):
                    log.info("consumer %s: stopping with a batch not stored; it will be read again", self.name)
                    return False
        offsets = {tp: recs[-1].offset + 1 for tp, recs in batches.items() if recs}
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # Partitions moved to another member: it re-reads the batch, which stores nothing twice.
            log.warning("consumer %s: commit failed, the batch will be read again: %s", self.name, exc)
            return False
        self._metrics.batch_records.labels(self.name).inc(len(records))
        self._metrics.batch_seconds.labels(self.name).observe(time.perf_counter() - started)
        for tp, next_offset in offsets.items():
            highwater = consumer.highwater(tp)
            if highwater is not None:
                self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - next_offset))
        return True
