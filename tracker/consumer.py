"""The detections consumer: one CameraTracker per camera, exactly-once counts in PostgreSQL.

Kafka keys ``carmesh.detections.v1`` by camera, so a camera's frames arrive in order on one
partition and one replica at a time tracks it. PostgreSQL, not Kafka, holds the offsets:
- on assignment a replica claims the partition (a new epoch fences the previous owner) and
  seeks to the stored next offset; a camera's tracker is restored from its checkpoint;
- each batch writes count deltas, the cameras' checkpoints and the next offsets in one
  transaction, committed only while the epoch is ours;
- on revocation the batch in progress finishes first (one lock), then the partition's
  cameras are dropped; after a failed commit the partitions seek back to the stored offsets
  and their trackers reload from the checkpoints, so nothing is applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from google.protobuf.message import DecodeError

from carmesh.v1 import common_pb2, tracking_pb2
from kit.names import is_valid_name
from tracker.metrics import TrackerMetrics
from tracker.online import OnlineCounts
from tracker.store import Claim, Fenced, TrackerStore, minute_of
from tracking.core import CameraTracker, FrameDetections, FrameResult, TrackerConfig
from tracking.counting import Direction, Event
from tracking.geometry import Layout

log = logging.getLogger(__name__)


@dataclass
class _Camera:
    partition: int
    layout_version: int
    tracker: CameraTracker
    class_names: dict[int, str]
    last_frame_monotonic_s: float = 0.0


def _frame(message: common_pb2.FrameDetections) -> FrameDetections:
    stamp = message.captured_at if message.HasField("captured_at") else message.detected_at
    boxes = [(d.box.x1, d.box.y1, d.box.x2, d.box.y2) for d in message.detections]
    return FrameDetections(
        seq=message.seq,
        timestamp_s=stamp.seconds + stamp.nanos / 1e9,
        boxes_xyxy=np.array(boxes, np.float64).reshape(-1, 4),
        scores=np.array([d.score for d in message.detections], np.float64),
        class_ids=np.array([d.class_id for d in message.detections], np.int64),
    )


def _event(
    message: common_pb2.FrameDetections, event: Event, class_name: str, tracker: CameraTracker
) -> tracking_pb2.TrackEvent:
    zone = event.direction in (Direction.ENTER, Direction.EXIT)
    out = tracking_pb2.TrackEvent(
        event_id=f"{message.camera_id}:{message.seq}:{event.track_id}:{event.name}:{event.direction}",
        camera_id=message.camera_id,
        seq=message.seq,
        track_id=event.track_id,
        class_name=class_name,
        name=event.name,
        direction=str(event.direction),
        occupancy=tracker.occupancy(event.name) if zone else 0,
    )
    out.captured_at.CopyFrom(message.captured_at if message.HasField("captured_at") else message.detected_at)
    return out


def _frame_tracks(
    message: common_pb2.FrameDetections, result: FrameResult, class_names: dict[int, str]
) -> tracking_pb2.FrameTracks:
    out = tracking_pb2.FrameTracks(camera_id=message.camera_id, seq=message.seq, missing_frames=result.missing_frames)
    out.captured_at.CopyFrom(message.captured_at if message.HasField("captured_at") else message.detected_at)
    for track in result.tracks:
        x1, y1, x2, y2 = track.box_xyxy
        item = out.tracks.add(
            track_id=track.track_id,
            class_name=class_names.get(track.class_id, str(track.class_id)),
            x1=x1,
            y1=y1,
            x2=x2,
            y2=y2,
            score=track.score,
            first_seen_seq=track.first_seen_seq,
        )
        item.first_seen_at.FromNanoseconds(round(track.first_seen_s * 1e9))
    return out


class TrackingConsumer:
    def __init__(
        self,
        store: TrackerStore,
        make_consumer: Callable[[], AIOKafkaConsumer],
        topic: str,
        owner: str,
        config: TrackerConfig,
        batch_size: int,
        poll_timeout_ms: int,
        retry_s: float = 1.0,
        publish: Callable[[list[tracking_pb2.TrackEvent], list[tracking_pb2.FrameTracks]], Awaitable[None]]
        | None = None,
        online: OnlineCounts | None = None,
        idle_camera_s: float = 600.0,
        metrics: TrackerMetrics | None = None,
    ) -> None:
        self._store = store
        self._make_consumer = make_consumer
        self._topic = topic
        self._owner = owner
        self._config = config
        self._batch_size = batch_size
        self._poll_timeout_ms = poll_timeout_ms
        self._retry_s = retry_s
        self._publish = publish
        self._online = online
        self._idle_camera_s = idle_camera_s
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._claims: dict[int, Claim] = {}
        self._cameras: dict[str, _Camera] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = False
        self._unclaimed: set[TopicPartition] = set()
        # partition -> the offset the next processed record must have (the stored next offset)
        self._expected: dict[int, int] = {}
        self.frames = Counter[str]()  # outcome -> frames, for tests and logs

    async def stop_taking_batches(self) -> None:
        """Waits for the batch in progress to commit; no batch is processed after this."""
        async with self._lock:
            self._stopping = True

    # -- partitions ----------------------------------------------------------------------

    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._lock:
            self._unclaimed |= set(assigned)
            try:
                await self._claim_pending()
            except Exception as exc:  # PostgreSQL down: the next batch tries again
                log.warning(
                    "claiming partitions failed (%s: %s); retrying with the next batch", type(exc).__name__, exc
                )

    async def _claim_pending(self) -> None:
        """Claims the assigned partitions not claimed yet and seeks each to its stored offset
        (under the lock). Records fetched before that are skipped: they come again."""
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        for tp in sorted(self._unclaimed):
            if tp not in assignment:
                self._unclaimed.discard(tp)
                continue
            claim = await self._store.claim(tp.topic, tp.partition, self._owner)
            start = await self._readable_offset(tp, claim.next_offset)
            if start != claim.next_offset:  # stored, so lag and a restart see the reset too
                await self._store.move_offset(tp.topic, tp.partition, claim.epoch, start)
            self._claims[tp.partition] = claim
            self._expected[tp.partition] = start
            self._unclaimed.discard(tp)
            self._consumer.resume(tp)  # paused if it was fenced earlier
            self._consumer.seek(tp, start)
            log.info("claimed %s[%d] epoch %d from offset %d", tp.topic, tp.partition, claim.epoch, start)

    async def _readable_offset(self, tp: TopicPartition, stored: int) -> int:
        """``stored``, unless the partition no longer has it: past its end, the topic was re-created
        (a broker that keeps topics in memory, a deleted topic), and waiting for offset ``stored`` would
        skip that many new records; before its start, retention deleted records never tracked. Either
        way tracking goes on from the partition's first record."""
        assert self._consumer is not None
        first = (await self._consumer.beginning_offsets([tp]))[tp]
        end = (await self._consumer.end_offsets([tp]))[tp]
        if first <= stored <= end:
            return stored
        if stored > end:
            log.warning(
                "%s[%d]: the stored offset %d is past the partition's end (%d): the topic was re-created; "
                "tracking from offset %d",
                tp.topic,
                tp.partition,
                stored,
                end,
                first,
            )
        else:
            log.warning(
                "%s[%d]: records %d..%d were deleted before they were tracked (retention); tracking from %d",
                tp.topic,
                tp.partition,
                stored,
                first - 1,
                first,
            )
        self.frames["offset_reset"] += 1
        return int(first)

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:  # waits for the batch in progress to commit
            for tp in revoked:
                self._drop(tp.partition)
                self._unclaimed.discard(tp)

    def _drop(self, partition: int) -> None:
        self._claims.pop(partition, None)
        self._expected.pop(partition, None)
        for camera in [c for c, state in self._cameras.items() if state.partition == partition]:
            del self._cameras[camera]

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        consumer = self._make_consumer()
        self._consumer = consumer
        outer = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                await outer._revoked(set(revoked))

            async def on_partitions_assigned(self, assigned: Any) -> None:
                await outer._assigned(set(assigned))

        consumer.subscribe([self._topic], listener=Listener())
        await consumer.start()
        try:
            while True:
                if self._unclaimed:  # after a failure: back to the stored offsets before fetching on
                    await self._assigned(set())
                    if self._unclaimed:  # PostgreSQL still down
                        await asyncio.sleep(self._retry_s)
                        continue
                batches = await consumer.getmany(timeout_ms=self._poll_timeout_ms, max_records=self._batch_size)
                if not batches:
                    continue
                try:
                    await self._process(batches)
                except Fenced as exc:
                    log.warning("fenced: %s; dropping its cameras until Kafka reassigns", exc)
                    async with self._lock:
                        for tp in batches:
                            self._drop(tp.partition)
                            consumer.pause(tp)  # another replica owns it now
                except Exception as exc:  # PostgreSQL down, a bug: nothing was committed, replay from the store
                    log.warning(
                        "a batch failed (%s: %s); replaying it in %.1fs", type(exc).__name__, exc, self._retry_s
                    )
                    await self._rewind(set(batches))
                    await asyncio.sleep(self._retry_s)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _rewind(self, partitions: set[TopicPartition]) -> None:
        """Back to what PostgreSQL holds: the partitions are claimed again (their stored offsets)
        with the next batch, and their cameras reload from the checkpoints. Touches no store."""
        async with self._lock:
            for tp in partitions:
                self._drop(tp.partition)
                self._unclaimed.add(tp)

    async def _cameras_for(self, wanted: dict[str, int]) -> None:
        """Loads (or re-lays-out) the trackers of cameras in this batch: camera -> partition."""
        layouts = await self._store.latest_layouts(wanted)
        missing = [c for c in wanted if c not in self._cameras]
        stale = [
            c
            for c, state in self._cameras.items()
            if c in wanted and state.layout_version != (layouts[c].version if c in layouts else 0)
        ]
        checkpoints = await self._store.checkpoints(missing) if missing else {}
        for camera in stale:  # a new layout: same tracks, new lines and zones
            state = self._cameras[camera]
            stored = layouts[camera]
            snapshot = state.tracker.checkpoint()
            state.tracker = CameraTracker.from_checkpoint(stored.layout, snapshot, self._config)
            state.layout_version = stored.version
        for camera in missing:
            version = layouts[camera].version if camera in layouts else 0
            layout = layouts[camera].layout if camera in layouts else Layout()
            names: dict[int, str] = {}
            if camera in checkpoints:
                _, snapshot = checkpoints[camera]
                tracker = CameraTracker.from_checkpoint(layout, snapshot, self._config)
                names = {int(k): str(v) for k, v in snapshot.get("class_names", {}).items()}
            else:
                tracker = CameraTracker(layout, self._config)
            self._cameras[camera] = _Camera(wanted[camera], version, tracker, names)

    async def _process(self, batches: dict[TopicPartition, list[Any]]) -> None:
        async with self._lock:
            if self._stopping:
                return
            if self._unclaimed:
                await self._claim_pending()
            messages: list[tuple[int, common_pb2.FrameDetections]] = []
            offsets: dict[int, tuple[int, int]] = {}
            for tp, records in batches.items():
                claim = self._claims.get(tp.partition)
                expected = self._expected.get(tp.partition)
                if claim is None or expected is None:
                    continue  # revoked since the fetch
                # Only records that continue from the stored offset: ones fetched before a seek are
                # older (skipped) or further on (they come again after the seek).
                records = [r for r in records if r.offset >= expected]
                if not records or records[0].offset != expected:
                    continue
                offsets[tp.partition] = (claim.epoch, records[-1].offset + 1)
                for record in records:
                    try:
                        message = common_pb2.FrameDetections.FromString(record.value or b"")
                    except DecodeError:
                        self.frames["skipped_not_detections"] += 1
                        continue
                    if not is_valid_name("camera id", message.camera_id):
                        self.frames["skipped_bad_camera"] += 1  # older producers may have written any
                        continue
                    messages.append((tp.partition, message))
            if not offsets:
                return
            await self._cameras_for({m.camera_id: p for p, m in messages})
            deltas: Counter[Any] = Counter()
            touched: set[str] = set()
            published: list[tracking_pb2.TrackEvent] = []
            frames: list[tracking_pb2.FrameTracks] = []
            newest: dict[str, float] = {}
            for _, message in messages:
                camera = self._cameras[message.camera_id]
                for d in message.detections:
                    camera.class_names.setdefault(d.class_id, d.class_name or str(d.class_id))
                frame = _frame(message)
                result = camera.tracker.update(frame)
                newest[message.camera_id] = max(newest.get(message.camera_id, frame.timestamp_s), frame.timestamp_s)
                self.frames["tracked" if result.accepted else "out_of_order"] += 1
                if result.accepted:
                    frames.append(_frame_tracks(message, result, camera.class_names))
                touched.add(message.camera_id)
                for event in result.events:
                    name = camera.class_names.get(event.class_id, str(event.class_id))
                    key = (message.camera_id, minute_of(event.timestamp_s), event.name, str(event.direction), name)
                    deltas[key] += 1
                    published.append(_event(message, event, name, camera.tracker))
            checkpoints = {}
            for camera_id in touched:
                camera = self._cameras[camera_id]
                snapshot = camera.tracker.checkpoint()
                snapshot["class_names"] = {str(k): v for k, v in camera.class_names.items()}
                checkpoints[camera_id] = (camera.layout_version, snapshot)
            # Events go out before the counts commit: a crash in between replays the batch and
            # sends them again with the same ids (at least once), never loses one.
            if (published or frames) and self._publish is not None:
                await self._publish(published, frames)
            await self._store.commit_batch(self._topic, offsets, checkpoints, deltas)
            for partition, (_, next_offset) in offsets.items():
                self._expected[partition] = next_offset
            now_s = time.monotonic()
            for camera_id in touched:
                self._cameras[camera_id].last_frame_monotonic_s = now_s
            if self._online is not None:
                for camera_id, at_s in newest.items():
                    tracker = self._cameras[camera_id].tracker
                    occupancy = {zone.name: tracker.occupancy(zone.name) for zone in tracker.layout.zones}
                    await self._online.update(camera_id, datetime.fromtimestamp(at_s, UTC), occupancy)
            self._evict_idle(now_s)

    def _evict_idle(self, now_s: float) -> None:
        """Drops cameras without frames for ``idle_camera_s`` (under the lock, after a commit): their
        checkpoints are committed, so a camera that comes back resumes from PostgreSQL. Without this, a
        fleet whose cameras come and go holds every tracker it ever saw."""
        idle = [c for c, state in self._cameras.items() if now_s - state.last_frame_monotonic_s >= self._idle_camera_s]
        for camera_id in idle:
            del self._cameras[camera_id]
        if idle:
            log.info("dropped %d idle camera(s) from memory", len(idle))
        if self._metrics is not None:
            self._metrics.cameras_evicted.inc(len(idle))
            self._metrics.cameras_in_memory.set(len(self._cameras))

    @property
    def cameras_in_memory(self) -> list[str]:
        return sorted(self._cameras)
