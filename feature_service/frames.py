"""The frames consumer's batch handler: validate each Frame, put image bytes in the blob store,
frames + features + annotations in PostgreSQL (one transaction), failures in the dead-letter
topic, latest features in Redis. Offsets are committed by the loop only after all of it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaProducer, ConsumerRecord

from feature_service.blobs import BlobStore
from feature_service.db import is_transient
from feature_service.metrics import FeatureMetrics
from feature_service.offline import FrameRow, OfflineStore
from feature_service.online import OnlineStore
from feature_service.repair import OnlineRepair
from feature_service.validation import Limits, Rejection, StoredFrame, parse_and_validate
from kit.dlq import dlq_headers
from kit.kafka import FRAMES_DLQ_TOPIC

log = logging.getLogger(__name__)


@dataclass
class _Rejected:
    record: ConsumerRecord
    rejection: Rejection
    sent: bool = False


@dataclass
class FrameBatch:
    """A polled batch and how far storing it got, so a retry redoes only what is left."""

    rows: list[FrameRow]
    rejected: list[_Rejected]
    duplicates_in_batch: int
    records: dict[str, ConsumerRecord]  # frame_id -> its record, for the DLQ
    stored: bool = False
    online_done: bool = False
    inserted: set[str] = field(default_factory=set)


class FrameHandler:
    def __init__(
        self,
        *,
        limits: Limits,
        blobs: BlobStore,
        offline: OfflineStore,
        online: OnlineStore,
        make_producer: Callable[[], AIOKafkaProducer],
        executor: Executor,
        metrics: FeatureMetrics,
        dlq_topic: str = FRAMES_DLQ_TOPIC,
        repair: OnlineRepair | None = None,
    ) -> None:
        self._limits = limits
        self._blobs = blobs
        self._offline = offline
        self._online = online
        self._make_producer = make_producer
        self._producer: AIOKafkaProducer | None = None
        self._executor = executor
        self._metrics = metrics
        self._dlq_topic = dlq_topic
        self._repair = repair

    async def open(self) -> None:
        producer = self._make_producer()
        await producer.start()
        self._producer = producer

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    def _check(self, record: ConsumerRecord) -> StoredFrame | Rejection:
        try:
            return parse_and_validate(record.value, record.timestamp, self._limits)
        except Exception as exc:  # an image that crashes the decoder must not stop the partition
            log.exception("validating frame at %s/%s failed", record.partition, record.offset)
            return Rejection("invalid", f"validation failed: {type(exc).__name__}: {exc}")

    async def prepare(self, records: list[ConsumerRecord]) -> FrameBatch:
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(self._executor, self._check, r) for r in records))
        rows: list[FrameRow] = []
        rejected: list[_Rejected] = []
        by_id: dict[str, ConsumerRecord] = {}
        duplicates = 0
        for record, result in zip(records, results, strict=True):
            if isinstance(result, Rejection):
                rejected.append(_Rejected(record, result))
            elif result.frame_id in by_id:
                duplicates += 1
            else:
                rows.append(FrameRow(result, record.partition, record.offset))
                by_id[result.frame_id] = record
        return FrameBatch(rows, rejected, duplicates, by_id)

    async def store(self, batch: FrameBatch) -> None:
        loop = asyncio.get_running_loop()
        if not batch.stored:
            # Put again on every attempt (cheap: an existing blob is only touched), so the rows are
            # inserted within the blob collector's grace of their blobs' last put (blob_gc.py).
            unique = {row.frame.image_sha256: row.frame.image for row in batch.rows}
            await asyncio.gather(*(loop.run_in_executor(self._executor, self._blobs.put, d) for d in unique.values()))
            await self._store_rows(batch)
            batch.stored = True
        await self._send_dlq(batch)
        if not batch.online_done:
            await self._update_online(batch)
            batch.online_done = True

    async def isolate(self, batch: FrameBatch, reason: str) -> None:
        """Stores the frames one at a time (blob, then row); those that fail alone without an outage
        go to the DLQ as ``store_failed`` with ``reason`` and their own error."""
        if not batch.stored:
            loop = asyncio.get_running_loop()
            kept: list[FrameRow] = []
            failed: list[_Rejected] = []
            inserted: set[str] = set()
            for row in batch.rows:
                try:
                    await loop.run_in_executor(self._executor, self._blobs.put, row.frame.image)
                    inserted |= await self._offline.insert_frames([row])
                    kept.append(row)
                except Exception as exc:
                    if is_transient(exc):
                        raise  # an outage after all: the whole isolation is retried (inserts are idempotent)
                    why = f"{reason}; alone: {type(exc).__name__}: {exc}"
                    failed.append(_Rejected(batch.records[row.frame.frame_id], Rejection("store_failed", why)))
            # Only now, so a retried isolation never lists a frame twice.
            batch.rows, batch.inserted = kept, inserted
            batch.rejected.extend(failed)
            batch.stored = True
            self._metrics.frames_stored.inc(len(inserted))
        await self._send_dlq(batch)
        if not batch.online_done:
            await self._update_online(batch)
            batch.online_done = True

    async def _store_rows(self, batch: FrameBatch) -> None:
        try:
            inserted = await self._offline.insert_frames(batch.rows)
        except asyncpg.PostgresError as exc:
            if is_transient(exc):
                raise
            log.warning("a batch of %d frames was refused (%s); storing them one by one", len(batch.rows), exc)
            inserted = await self._store_one_by_one(batch)
        self._metrics.frames_stored.inc(len(inserted))
        self._metrics.frames_duplicate.inc(len(batch.rows) - len(inserted) + batch.duplicates_in_batch)
        batch.inserted = inserted

    async def _store_one_by_one(self, batch: FrameBatch) -> set[str]:
        """Finds the frames PostgreSQL refuses (they go to the DLQ) so the rest are stored."""
        inserted: set[str] = set()
        kept: list[FrameRow] = []
        for row in batch.rows:
            try:
                inserted |= await self._offline.insert_frames([row])
                kept.append(row)
            except asyncpg.PostgresError as exc:
                if is_transient(exc):
                    raise
                reason = Rejection("store_rejected", f"PostgreSQL refused the frame: {exc}")
                batch.rejected.append(_Rejected(batch.records[row.frame.frame_id], reason))
        batch.rows = kept
        return inserted

    async def _send_dlq(self, batch: FrameBatch) -> None:
        pending = [item for item in batch.rejected if not item.sent]
        if not pending:
            return
        if self._producer is None:
            raise RuntimeError("the DLQ producer is not started")
        producer = self._producer

        async def send(item: _Rejected) -> None:
            record = item.record
            await producer.send_and_wait(
                self._dlq_topic,
                value=record.value,
                key=record.key,
                headers=dlq_headers(record, item.rejection.reason, by="feature_service"),
            )
            item.sent = True
            self._metrics.frames_dlq.labels(item.rejection.code).inc()
            log.warning(
                "frame at %s/%d/%d to %s: %s",
                record.topic,
                record.partition,
                record.offset,
                self._dlq_topic,
                item.rejection.reason,
            )

        await asyncio.gather(*(send(item) for item in pending))

    async def _update_online(self, batch: FrameBatch) -> None:
        latest: dict[str, StoredFrame] = {}
        for row in batch.rows:
            current = latest.get(row.frame.camera_id)
            if current is None or row.frame.captured_at >= current.captured_at:
                latest[row.frame.camera_id] = row.frame
        try:
            for frame in latest.values():
                await self._online.put_frame(frame.camera_id, frame.frame_id, frame.captured_at, frame.features)
        except Exception as exc:
            # Online features are best effort: the offline store is the record, and the next frame repairs them.
            self._metrics.online_write_errors.labels("frames").inc()
            log.warning("could not update online features in Redis: %s", exc)
            if self._repair is not None and is_transient(exc):
                self._repair.failed(latest, exc)
