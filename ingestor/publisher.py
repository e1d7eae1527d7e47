"""Publishes frames to Kafka through a bounded window of unacknowledged frames.

A frame is *accepted* once it holds a slot of the window: from then on it is re-sent with
backoff until the broker acknowledges it (aiokafka retries inside a batch's lifetime, this
module re-sends after a batch expires), so nothing accepted is dropped silently. When the
window is full, callers wait; gRPC callers wait only ``wait_s`` and then get UNAVAILABLE,
which tells a client to retry instead of the daemon buffering without bound. A re-sent frame
may land after newer frames of its camera: consumers order by seq and dedupe by frame_id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError

from carmesh.v1 import common_pb2
from ingestor.errors import BrokerUnavailable, PublishFailed
from ingestor.metrics import IngestorMetrics
from kit.backoff import Backoff
from kit.kafka import create_producer, ensure_topics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublisherOptions:
    bootstrap: str
    topic: str
    partitions: int
    idempotence: bool
    max_in_flight: int
    retry_initial_s: float
    retry_max_s: float
    client_id: str = "carmesh-ingestor"


def _retriable(exc: KafkaError) -> bool:
    # An expired batch (KafkaTimeoutError) is what a broker outage looks like: worth re-sending.
    return bool(getattr(exc, "retriable", False)) or isinstance(exc, KafkaTimeoutError)


def _consume_outcome(future: asyncio.Future[None]) -> None:
    # Callers that only count outcomes must not leave "exception never retrieved" noise behind.
    if not future.cancelled():
        future.exception()


class Publisher:
    """Owns the producer; :meth:`start` connects in the background (with backoff) so the
    daemon serves while the broker is still down."""

    def __init__(self, options: PublisherOptions, metrics: IngestorMetrics) -> None:
        self.options = options
        self._metrics = metrics
        self._backoff = Backoff(options.retry_initial_s, options.retry_max_s)
        self._slots = asyncio.Semaphore(options.max_in_flight)
        self._buffered = 0
        self._producer: AIOKafkaProducer | None = None
        self._connected = asyncio.Event()
        self._connect_task: asyncio.Task[None] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._last_error: str | None = None
        self._closing = False

    @property
    def buffered(self) -> int:
        """Frames accepted and not yet acknowledged."""
        return self._buffered

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def last_error(self) -> str | None:
        """The latest broker error, cleared by the next acknowledgement."""
        return self._last_error

    def start(self) -> None:
        self._connect_task = asyncio.create_task(self._connect(), name="ingestor-kafka-connect")

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def _connect(self) -> None:
        opts = self.options
        delays = self._backoff.delays()
        while True:
            producer: AIOKafkaProducer | None = None
            try:
                await ensure_topics(opts.bootstrap, {opts.topic: opts.partitions})
                producer = create_producer(opts.bootstrap, client_id=opts.client_id, idempotence=opts.idempotence)
                await producer.start()
            except (KafkaError, OSError) as exc:
                if producer is not None:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                self._note_error(exc)
                delay = next(delays)
                log.warning("kafka at %s not usable yet (%s); retrying in %.1fs", opts.bootstrap, exc, delay)
                await asyncio.sleep(delay)
                continue
            self._producer = producer
            self._last_error = None
            self._metrics.broker_connected.set(1)
            self._connected.set()
            log.info("publishing to %s on %s", opts.topic, opts.bootstrap)
            return

    def _note_error(self, exc: BaseException) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._metrics.broker_connected.set(0)

    def unavailable(self) -> BrokerUnavailable:
        # Until a batch expires aiokafka does not report a refused connection, so "no
        # acknowledgement in time" is all that is known: both cases read as unreachable.
        detail = f" (last error: {self._last_error})" if self._last_error else ""
        return BrokerUnavailable(
            f"broker {self.options.bootstrap} unreachable or not acknowledging, {self._buffered} frames buffered; "
            f"retry later{detail}"
        )

    async def publish(self, frame: common_pb2.Frame, *, origin: str, wait_s: float | None) -> asyncio.Future[None]:
        """Takes a slot of the window (waiting at most ``wait_s``; ``None``: as long as it takes)
        and returns a future that resolves once the broker acknowledged the frame, or fails
        with :class:`PublishFailed` when the broker refuses it for good."""
        if self._closing:
            raise BrokerUnavailable("the ingestor is shutting down; retry on another instance or later")
        value = frame.SerializeToString()
        key = frame.camera_id.encode()
        if wait_s is None or not self._slots.locked():
            await self._slots.acquire()
        elif wait_s <= 0 or self._last_error is not None:
            # A known outage with a full window will not clear within a request's patience.
            raise self.unavailable()
        else:
            try:
                await asyncio.wait_for(self._slots.acquire(), wait_s)
            except TimeoutError:
                raise self.unavailable() from None
        self._buffered += 1
        self._metrics.frames_buffered.set(self._buffered)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_consume_outcome)
        task = asyncio.create_task(self._deliver(value, key, origin, done))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return done

    async def _deliver(self, value: bytes, key: bytes, origin: str, done: asyncio.Future[None]) -> None:
        opts = self.options
        started = time.perf_counter()
        delays = self._backoff.delays()
        try:
            while True:
                await self._connected.wait()
                assert self._producer is not None
                try:
                    ack = await self._producer.send(opts.topic, value, key=key)
                    await ack
                except KafkaError as exc:
                    if not _retriable(exc):
                        self._metrics.frames_failed.inc()
                        reason = f"broker refused the frame: {type(exc).__name__}: {exc}"
                        if not done.done():
                            done.set_exception(PublishFailed(reason))
                        return
                    self._note_error(exc)
                    self._metrics.produce_retries.inc()
                    delay = next(delays)
                    log.debug("produce failed (%s); re-sending in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    continue
                break
            if self._last_error is not None:
                log.info("broker %s acknowledges again", opts.bootstrap)
            self._last_error = None
            self._metrics.broker_connected.set(1)
            self._metrics.produce_seconds.observe(time.perf_counter() - started)
            self._metrics.frames_published.labels(origin).inc()
            self._metrics.bytes_published.inc(len(value))
            if not done.done():
                done.set_result(None)
        except asyncio.CancelledError:
            done.cancel()
            raise
        finally:
            self._buffered -= 1
            self._metrics.frames_buffered.set(self._buffered)
            self._slots.release()

    async def close(self, flush_timeout_s: float) -> None:
        """Refuses new frames, waits up to ``flush_timeout_s`` for the accepted ones, stops the producer."""
        self._closing = True
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connect_task
        pending = set(self._deliveries)
        if pending:
            log.info("flushing %d frames to the broker (up to %.1fs)", len(pending), flush_timeout_s)
            flushed, pending = await asyncio.wait(pending, timeout=flush_timeout_s)
            log.info("flushed %d frames", len(flushed))
        if pending:
            log.error("%d accepted frames were not acknowledged before shutdown: %s", len(pending), self._last_error)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._producer is not None:
            try:
                await asyncio.wait_for(self._producer.stop(), timeout=max(flush_timeout_s, 1.0))
            except TimeoutError:
                log.warning("kafka producer did not stop in time")
            self._producer = None
