"""Streaming detection: frames from carmesh.frames.v1 (own consumer group) go through the same
detector, batcher and model as gRPC Detect; their detections go to carmesh.detections.v1.

At-least-once: a frame's offset is committed only once its detections were acknowledged by
the broker (or the frame was skipped as unusable), and never past an earlier frame still in
flight. A frame whose detection keeps failing (a runtime fault, not a bad image) goes to
carmesh.frames.dlq.v1 with the reason before its offset is committed: never silently dropped.
Backpressure: records are taken from the consumer only while the stream's window and
the model's batching queue have room; with no model loaded the partitions are paused.
Detections of a partition are sent in offset order, so each camera's stay in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from google.protobuf.message import DecodeError

from carmesh.v1 import common_pb2
from detector.detector import DetectOptions, Detector, DetectResult
from detector.errors import BadImage, ModelClosed, NoModel, QueueFull
from detector.metrics import StreamMetrics
from detector.models import ModelManager
from detector.offsets import OffsetTracker, Pending
from detector.server import frame_detections
from kit.backoff import Backoff, wait_event
from kit.dlq import dlq_headers
from kit.kafka import (
    DEFAULT_PARTITIONS,
    DETECTIONS_TOPIC,
    FRAMES_DLQ_TOPIC,
    FRAMES_TOPIC,
    create_consumer,
    create_producer,
    ensure_topics,
)
from kit.names import name_problem

log = logging.getLogger(__name__)

# Errors that clear up by themselves (a full queue, a model swap): the frame waits and retries.
_TRANSIENT = (QueueFull, ModelClosed, NoModel)
# Any other failure of one frame (a runtime fault) is retried this often, then the frame is dead-lettered.
_MAX_FAILED_ATTEMPTS = 3
_POLL_MS = 200


class _DeadLetter(Exception):
    """A frame that cannot be detected however often it is tried; ``reason`` goes in its DLQ header."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class StreamOptions:
    bootstrap: str
    group_id: str
    idempotence: bool
    max_inflight: int
    retry_max_s: float = 2.0
    session_timeout_ms: int = 10_000
    max_poll_interval_ms: int = 300_000
    client_id: str = "carmesh-detector"
    frames_topic: str = FRAMES_TOPIC
    detections_topic: str = DETECTIONS_TOPIC
    dlq_topic: str = FRAMES_DLQ_TOPIC


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, on_revoked: Callable[[set[TopicPartition]], Awaitable[None]]) -> None:
        self._on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("frames partitions assigned: %s", ", ".join(str(tp.partition) for tp in sorted(assigned)) or "none")


class FrameStream:
    """Consumes frames and publishes detections until :meth:`stop`."""

    def __init__(
        self, detector: Detector, manager: ModelManager, options: StreamOptions, metrics: StreamMetrics
    ) -> None:
        self._detector = detector
        self._manager = manager
        self._options = options
        self._metrics = metrics
        # One frame's retries (detecting, publishing) start short; a broker that is down for a
        # reconnect usually stays down longer than one frame's hiccup.
        self._retry = Backoff(0.05, options.retry_max_s)
        self._reconnect = Backoff(0.5, options.retry_max_s * 4)
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._to_commit: dict[TopicPartition, int] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        # Per partition: resolved once the latest record's detections were handed to the producer.
        self._turns: dict[TopicPartition, asyncio.Future[None]] = {}
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._grace_s = 10.0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="frame stream")

    async def stop(self, grace_s: float) -> None:
        """Stops taking frames, lets those in flight finish (up to ``grace_s``), commits, closes."""
        if self._task is None or self._task.done():
            return
        self._grace_s = grace_s
        self._stopping.set()
        try:
            # Beyond the grace: a connect attempt or commit that hangs on a dead broker.
            await asyncio.wait_for(asyncio.shield(self._task), grace_s + 10)
        except TimeoutError:
            log.warning("frame stream did not stop within %.1fs; cancelling", grace_s + 10)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- connection ---------------------------------------------------------------------

    async def _run(self) -> None:
        delays = self._reconnect.delays()
        while not self._stopping.is_set():
            opts = self._options
            consumer = create_consumer(
                opts.bootstrap,
                group_id=opts.group_id,
                client_id=opts.client_id,
                session_timeout_ms=opts.session_timeout_ms,
                heartbeat_interval_ms=max(100, opts.session_timeout_ms // 3),
                max_poll_interval_ms=opts.max_poll_interval_ms,
            )
            producer = create_producer(opts.bootstrap, client_id=opts.client_id, idempotence=opts.idempotence)
            try:
                await ensure_topics(opts.bootstrap, {t: DEFAULT_PARTITIONS.get(t, 1) for t in self._topics()})
                await producer.start()
                consumer.subscribe([opts.frames_topic], listener=_Rebalance(self._release))
                await consumer.start()
            except (KafkaError, OSError) as exc:
                delay = next(delays)
                log.warning("cannot reach Kafka at %s (%s); retrying in %.1fs", opts.bootstrap, exc, delay)
                await self._close(consumer, producer)
                await wait_event(self._stopping, delay)
                continue
            log.info(
                "consuming %s as group %s, publishing to %s", opts.frames_topic, opts.group_id, opts.detections_topic
            )
            self._consumer = consumer
            try:
                await self._consume(consumer, producer)
            except Exception:
                # A fatal consumer error (fenced member, broker refusal...): start over with new clients
                # rather than leave a serving detector that silently stopped streaming.
                log.exception("frame stream failed; reconnecting")
            finally:
                await self._finish(consumer)
                self._consumer = None
                await self._close(consumer, producer)
                self._forget()
            if not self._stopping.is_set():
                await wait_event(self._stopping, next(delays))

    def _forget(self) -> None:
        """Drops what belonged to the closed consumer: the next one resumes from the committed offsets."""
        partitions = set(self._turns) | set(self._tasks) | set(self._to_commit)
        self._tracker.drop(partitions)
        self._turns.clear()
        self._tasks.clear()
        self._to_commit.clear()

    def _topics(self) -> tuple[str, str, str]:
        return (self._options.frames_topic, self._options.detections_topic, self._options.dlq_topic)

    @staticmethod
    async def _close(consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        # The consumer first: leaving the group hands its partitions over at once.
        for client in (consumer, producer):
            try:
                await client.stop()
            except Exception as exc:  # closing a half-started client; nothing left to save
                log.debug("closing %s: %s", type(client).__name__, exc)

    # -- the consume loop ---------------------------------------------------------------

    def _budget(self) -> int:
        """How many more records the stream may take now: its window and the batching queue's room."""
        loaded = self._manager.current
        if loaded is None:
            return 0
        window = self._options.max_inflight - self._tracker.unfinished
        queue_room = self._manager.batching.max_queue - loaded.batcher.pending
        return min(window, queue_room)

    def _set_paused(self, consumer: AIOKafkaConsumer, paused: bool) -> None:
        if paused:
            newly = [tp for tp in consumer.assignment() if tp not in consumer.paused()]
            if newly:
                consumer.pause(*newly)
                log.info("no model loaded: paused frames partitions %s", ", ".join(str(tp.partition) for tp in newly))
        elif consumer.paused():
            consumer.resume(*consumer.paused())
            log.info("model loaded: consuming frames")
        self._metrics.paused.set(1 if paused else 0)

    async def _consume(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer) -> None:
        while not self._stopping.is_set():
            await self._commit(consumer)
            no_model = self._manager.current is None
            self._set_paused(consumer, no_model)
            if no_model:
                # Paused partitions return nothing; polling keeps this member alive in its group. A
                # partition assigned during the poll may still yield a record: it is taken (and waits
                # for a model) rather than dropped, since its position has moved past it.
                budget = 1
            else:
                budget = self._budget()
                if budget <= 0:
                    self._slot_freed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._slot_freed.wait(), _POLL_MS / 1000)
                    continue
            batches = await consumer.getmany(timeout_ms=_POLL_MS, max_records=budget)
            for tp, records in batches.items():
                for record in records:
                    self._take(tp, record, producer)

    def _take(self, tp: TopicPartition, record: Any, producer: AIOKafkaProducer) -> None:
        entry = self._tracker.add(tp, record.offset)
        self._metrics.inflight.inc()
        previous = self._turns.get(tp)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turns[tp] = turn
        task = asyncio.create_task(self._handle(record, previous, turn, producer), name=f"frame {tp}@{record.offset}")
        tasks = self._tasks.setdefault(tp, set())
        tasks.add(task)
        task.add_done_callback(lambda t: self._handled(t, tp, entry, turn))

    def _handled(
        self, task: asyncio.Task[None], tp: TopicPartition, entry: Pending, turn: asyncio.Future[None]
    ) -> None:
        # A task cancelled before it ran never resolved its turn; the next frame must not wait on it forever.
        if not turn.done():
            turn.set_result(None)
        self._tasks.get(tp, set()).discard(task)
        self._metrics.inflight.dec()
        # A cancelled frame (shutdown, revoked partition) is not done: it stays uncommitted and comes back.
        if not task.cancelled():
            if task.exception() is not None:
                # A bug past the dead-letter path (which catches detection faults): counted, not stalled on.
                self._metrics.frames.labels("skipped_failed").inc()
                log.error("frame at %s@%d failed: %r", tp, entry.offset, task.exception())
            self._tracker.done(entry)
        self._slot_freed.set()

    async def _commit(self, consumer: AIOKafkaConsumer, only: set[TopicPartition] | None = None) -> None:
        self._to_commit.update(self._tracker.ready())
        assigned = consumer.assignment()
        offsets = {tp: o for tp, o in self._to_commit.items() if tp in assigned and (only is None or tp in only)}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # Kept and retried with the next commit; at worst these frames are detected again.
            log.warning("committing frame offsets failed (%s); will retry", exc)
            return
        self._metrics.committed.inc()
        for tp, offset in offsets.items():
            if self._to_commit.get(tp) == offset:
                del self._to_commit[tp]

    async def _wait_tasks(self, tasks: set[asyncio.Task[None]], timeout_s: float, why: str) -> None:
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout_s)
        if late:
            log.warning(
                "%s: %d frames still in flight after %.1fs; they will be redelivered", why, len(late), timeout_s
            )
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _release(self, revoked: set[TopicPartition]) -> None:
        """Before partitions move to another member: finish their frames and commit them."""
        tasks = {task for tp in revoked for task in self._tasks.get(tp, set())}
        await self._wait_tasks(tasks, self._grace_s, "partitions revoked")
        if self._consumer is not None:
            await self._commit(self._consumer, only=revoked)
        self._tracker.drop(revoked)
        for tp in revoked:
            self._to_commit.pop(tp, None)
            self._turns.pop(tp, None)
            self._tasks.pop(tp, None)

    async def _finish(self, consumer: AIOKafkaConsumer) -> None:
        tasks = {task for group in self._tasks.values() for task in group}
        if tasks:
            log.info("stopping: finishing %d frames in flight", len(tasks))
        await self._wait_tasks(tasks, self._grace_s, "stopping")
        with contextlib.suppress(Exception):
            await self._commit(consumer)
        self._metrics.paused.set(0)

    # -- one frame ----------------------------------------------------------------------

    async def _handle(
        self,
        record: Any,
        previous: asyncio.Future[None] | None,
        turn: asyncio.Future[None],
        producer: AIOKafkaProducer,
    ) -> None:
        try:
            try:
                message = await self._detections_of(record)
            except _DeadLetter as dead:
                await self._dead_letter(record, producer, dead.reason)
                return
            if previous is not None:
                await previous
            if message is None:
                return
            key = message.camera_id.encode()
            value = message.SerializeToString()
            delays = self._retry.delays()
            while True:
                try:
                    delivery = await producer.send(self._options.detections_topic, value=value, key=key)
                    if not turn.done():
                        turn.set_result(None)
                    await delivery
                    break
                except KafkaError as exc:
                    self._metrics.retries.labels("publish").inc()
                    delay = next(delays)
                    log.warning(
                        "publishing detections of frame %s failed (%s); retrying in %.2fs", message.frame_id, exc, delay
                    )
                    await asyncio.sleep(delay)
            self._metrics.frames.labels("published").inc()
        finally:
            if not turn.done():
                turn.set_result(None)

    async def _dead_letter(self, record: Any, producer: AIOKafkaProducer, reason: str) -> None:
        """Sends ``record`` as it came to the DLQ, retrying until the broker has it (then it is committed)."""
        headers = dlq_headers(record, reason, by="detector")
        delays = self._retry.delays()
        while True:
            try:
                await producer.send_and_wait(
                    self._options.dlq_topic, value=record.value, key=record.key, headers=headers
                )
                break
            except KafkaError as exc:
                self._metrics.retries.labels("dead_letter").inc()
                delay = next(delays)
                log.warning(
                    "dead-lettering the frame at offset %d failed (%s); retrying in %.2fs", record.offset, exc, delay
                )
                await asyncio.sleep(delay)
        self._metrics.frames.labels("dead_lettered").inc()
        log.error(
            "frame at %s[%d]@%d sent to %s: %s",
            record.topic,
            record.partition,
            record.offset,
            self._options.dlq_topic,
            reason,
        )

    def _skip(self, record: Any, outcome: str, why: str) -> None:
        self._metrics.frames.labels(outcome).inc()
        log.warning("skipping frame at %s[%d]@%d: %s", record.topic, record.partition, record.offset, why)

    async def _detections_of(self, record: Any) -> common_pb2.FrameDetections | None:
        """The message to publish for one record; None when the frame is skipped."""
        try:
            frame = common_pb2.Frame.FromString(record.value or b"")
        except DecodeError as exc:
            self._skip(record, "skipped_undecodable", f"not a carmesh.v1.Frame ({exc})")
            return None
        problem = name_problem("camera id", frame.camera_id)
        if problem is not None:  # from an older producer: it would key Redis wrongly downstream
            self._skip(record, "skipped_invalid_name", f"frame {frame.frame_id!r}: {problem}")
            return None
        result = await self._detect(record, frame)
        return None if result is None else frame_detections(frame, result)

    async def _detect(self, record: Any, frame: common_pb2.Frame) -> DetectResult | None:
        delays = self._retry.delays()
        failures = 0
        while True:
            try:
                return await self._detector.detect(frame.image, DetectOptions())
            except BadImage as exc:
                self._skip(record, "skipped_undecodable", f"frame {frame.frame_id!r}: {exc}")
                return None
            except _TRANSIENT as exc:
                self._metrics.retries.labels(type(exc).__name__).inc()
                reason = str(exc)
            except Exception as exc:
                failures += 1
                self._metrics.retries.labels("failed").inc()
                if failures >= _MAX_FAILED_ATTEMPTS:
                    log.exception("frame %r failed %d times", frame.frame_id, failures)
                    raise _DeadLetter(
                        f"detect_failed: frame {frame.frame_id!r} failed {failures} times: {type(exc).__name__}: {exc}"
                    ) from exc
                reason = f"{type(exc).__name__}: {exc}"
            delay = next(delays)
            log.debug("frame %r: %s; retrying in %.2fs", frame.frame_id, reason, delay)
            await asyncio.sleep(delay)
