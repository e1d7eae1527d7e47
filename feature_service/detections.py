"""The detections consumer's batch handler: FrameDetections from carmesh.detections.v1 into the
predictions tables (one transaction per batch, idempotent per frame and model version) and the
per-camera car counts in Redis. Runs whose store keeps failing without an outage go to
carmesh.detections.dlq.v1 with the reason (unusable records are counted and dropped: they can
be recomputed from the stored frame)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaProducer, ConsumerRecord
from google.protobuf.message import DecodeError

from carmesh.v1 import common_pb2
from feature_service.db import is_transient
from feature_service.metrics import FeatureMetrics
from feature_service.offline import DetectionRun, OfflineStore, PredictionRow, RunKey
from feature_service.online import ModelInfo, OnlineStore
from feature_service.repair import OnlineRepair
from feature_service.validation import MAX_ID_CHARS
from kit.dlq import dlq_headers
from kit.kafka import DETECTIONS_DLQ_TOPIC
from kit.names import name_problem

log = logging.getLogger(__name__)


class Unusable(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _text(name: str, value: str, required: bool = True) -> str:
    if required and not value:
        raise Unusable("missing_field", f"{name} is empty")
    if len(value) > MAX_ID_CHARS or "\x00" in value:
        raise Unusable("bad_field", f"{name} is longer than {MAX_ID_CHARS} characters or contains NUL")
    return value


def _name(kind: str, name: str, value: str, required: bool = True) -> str:
    """Names that key Redis (camera ids): records of older producers may carry any string."""
    value = _text(name, value, required)
    problem = name_problem(kind, value) if value else None
    if problem is not None:
        raise Unusable("invalid_name", f"{name}: {problem}")
    return value


def parse_run(record: ConsumerRecord) -> DetectionRun:
    """One FrameDetections record as a run to store; raises :class:`Unusable`."""
    message = common_pb2.FrameDetections()
    try:
        message.ParseFromString(record.value or b"")
    except DecodeError as exc:
        raise Unusable("bad_protobuf", f"not a carmesh.v1.FrameDetections: {exc}") from exc
    predictions = []
    for i, det in enumerate(message.detections):
        values = (det.score, det.box.x1, det.box.y1, det.box.x2, det.box.y2)
        if not all(math.isfinite(v) for v in values):
            raise Unusable("bad_detection", f"detections[{i}] has a non-finite score or coordinate")
        name = _text(f"detections[{i}].class_name", det.class_name, required=False)
        predictions.append(PredictionRow(det.class_id, name, *values))
    if message.HasField("detected_at") and (message.detected_at.seconds or message.detected_at.nanos):
        try:
            detected_at = message.detected_at.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError) as exc:
            raise Unusable("bad_timestamp", f"detected_at is not a valid time: {exc}") from exc
    else:
        detected_at = datetime.fromtimestamp(max(record.timestamp, 0) / 1000, tz=UTC)
    return DetectionRun(
        frame_id=_text("frame_id", message.frame_id),
        camera_id=_name("camera id", "camera_id", message.camera_id),
        model_name=_text("model.name", message.model.name),
        model_version=_text("model.version", message.model.version),
        model_alias=_text("model.alias", message.model.alias, required=False),
        detected_at=detected_at,
        image_width=message.image_width,
        image_height=message.image_height,
        predictions=tuple(predictions),
        partition=record.partition,
        offset=record.offset,
    )


def car_count(run: DetectionRun, car_classes: Collection[str]) -> int:
    return sum(1 for p in run.predictions if not car_classes or p.class_name in car_classes)


@dataclass
class DetectionBatch:
    runs: list[DetectionRun]
    duplicates_in_batch: int
    stored: bool = False
    online_done: bool = False
    records: dict[RunKey, ConsumerRecord] = field(default_factory=dict)  # for the DLQ
    dead: list[tuple[ConsumerRecord, str]] = field(default_factory=list)  # (record, reason) not yet sent


class DetectionHandler:
    def __init__(
        self,
        *,
        offline: OfflineStore,
        online: OnlineStore,
        car_classes: Collection[str],
        metrics: FeatureMetrics,
        make_producer: Callable[[], AIOKafkaProducer] | None = None,
        dlq_topic: str = DETECTIONS_DLQ_TOPIC,
        repair: OnlineRepair | None = None,
    ) -> None:
        self._offline = offline
        self._online = online
        self._car_classes = frozenset(car_classes)
        self._metrics = metrics
        self._make_producer = make_producer
        self._producer: AIOKafkaProducer | None = None
        self._dlq_topic = dlq_topic
        self._repair = repair

    async def open(self) -> None:
        if self._make_producer is not None:
            producer = self._make_producer()
            await producer.start()
            self._producer = producer

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def prepare(self, records: list[ConsumerRecord]) -> DetectionBatch:
        runs: dict[RunKey, DetectionRun] = {}
        by_key: dict[RunKey, ConsumerRecord] = {}
        duplicates = 0
        for record in records:
            try:
                run = parse_run(record)
            except Unusable as exc:
                # Not dead-lettered: unusable detections can be recomputed from the stored frame.
                self._metrics.detections_rejected.labels(exc.code).inc()
                log.warning("dropping detections at %s/%d/%d: %s", record.topic, record.partition, record.offset, exc)
                continue
            if run.key in runs:
                duplicates += 1
                continue
            runs[run.key] = run
            by_key[run.key] = record
        return DetectionBatch(list(runs.values()), duplicates, records=by_key)

    async def store(self, batch: DetectionBatch) -> None:
        if not batch.stored:
            await self._store_runs(batch)
            batch.stored = True
        await self._send_dlq(batch)
        if not batch.online_done:
            await self._update_online(batch)
            batch.online_done = True

    async def isolate(self, batch: DetectionBatch, reason: str) -> None:
        """Stores the runs one at a time; those that fail alone without an outage go to the DLQ."""
        if not batch.stored:
            kept: list[DetectionRun] = []
            dead: list[tuple[ConsumerRecord, str]] = []
            inserted: set[RunKey] = set()
            for run in batch.runs:
                try:
                    inserted |= await self._offline.insert_detections([run])
                    kept.append(run)
                except Exception as exc:
                    if is_transient(exc):
                        raise  # an outage after all: the isolation is retried (inserts are idempotent)
                    dead.append((batch.records[run.key], f"store_failed: {reason}; alone: {type(exc).__name__}: {exc}"))
            batch.runs = kept
            batch.dead.extend(dead)
            batch.stored = True
            self._metrics.detection_runs_stored.inc(len(inserted))
        await self._send_dlq(batch)
        if not batch.online_done:
            await self._update_online(batch)
            batch.online_done = True

    async def _send_dlq(self, batch: DetectionBatch) -> None:
        if not batch.dead:
            return
        if self._producer is None:
            raise RuntimeError("the detections DLQ producer is not started")
        producer = self._producer
        sent: list[tuple[ConsumerRecord, str]] = []

        async def send(record: ConsumerRecord, reason: str) -> None:
            headers = dlq_headers(record, reason, by="feature_service")
            await producer.send_and_wait(self._dlq_topic, value=record.value, key=record.key, headers=headers)
            sent.append((record, reason))
            self._metrics.detections_dlq.labels(reason.partition(":")[0]).inc()
            log.warning(
                "detections at %s/%d/%d to %s: %s",
                record.topic,
                record.partition,
                record.offset,
                self._dlq_topic,
                reason,
            )

        try:
            await asyncio.gather(*(send(record, reason) for record, reason in batch.dead))
        finally:
            batch.dead = [item for item in batch.dead if item not in sent]

    async def _store_runs(self, batch: DetectionBatch) -> None:
        if not batch.runs:
            return
        try:
            inserted = await self._offline.insert_detections(batch.runs)
        except asyncpg.PostgresError as exc:
            if is_transient(exc):
                raise
            log.warning("a batch of %d detections was refused (%s); storing them one by one", len(batch.runs), exc)
            inserted = set()
            kept = []
            for run in batch.runs:
                try:
                    inserted |= await self._offline.insert_detections([run])
                    kept.append(run)
                except asyncpg.PostgresError as one_exc:
                    if is_transient(one_exc):
                        raise
                    self._metrics.detections_rejected.labels("store_rejected").inc()
                    log.warning("detections of frame %s to the DLQ: PostgreSQL refused them: %s", run.frame_id, one_exc)
                    reason = f"store_rejected: PostgreSQL refused the detections: {one_exc}"
                    batch.dead.append((batch.records[run.key], reason))
            batch.runs = kept
        self._metrics.detection_runs_stored.inc(len(inserted))
        self._metrics.predictions_stored.inc(sum(len(r.predictions) for r in batch.runs if r.key in inserted))
        self._metrics.detections_duplicate.inc(len(batch.runs) - len(inserted) + batch.duplicates_in_batch)

    async def _update_online(self, batch: DetectionBatch) -> None:
        try:
            for run in sorted(batch.runs, key=lambda r: r.detected_at):
                model = ModelInfo(run.model_name, run.model_version, run.model_alias)
                count = car_count(run, self._car_classes)
                await self._online.put_detections(run.camera_id, run.frame_id, run.detected_at, count, model)
        except Exception as exc:
            # Best effort, as for frames: the predictions tables are the record.
            self._metrics.online_write_errors.labels("detections").inc()
            log.warning("could not update car counts in Redis: %s", exc)
            if self._repair is not None and is_transient(exc):
                self._repair.failed({run.camera_id for run in batch.runs}, exc)
