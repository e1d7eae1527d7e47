"""Kafka helpers for the streaming-detection tests: produce frames, read detections back."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from google.protobuf.message import DecodeError

from carmesh.v1 import common_pb2
from kit.kafka import DETECTIONS_TOPIC, FRAMES_TOPIC, create_consumer, create_producer, ensure_topics
from tests.support import eventually_async

# Bytes that are no protobuf message at all (a truncated varint tag).
NOT_A_FRAME = b"\xff\xff\xff\xff"


def frame(camera_id: str, seq: int, image: bytes, width: int = 0, height: int = 0) -> common_pb2.Frame:
    message = common_pb2.Frame(
        frame_id=f"{camera_id}-{seq:04d}",
        camera_id=camera_id,
        seq=seq,
        encoding=common_pb2.IMAGE_ENCODING_JPEG,
        image=image,
        width=width,
        height=height,
        source="tests/detector",
    )
    message.captured_at.GetCurrentTime()
    return message


def jpeg_frames(camera_id: str, images: Sequence[Path], first_seq: int = 0) -> list[common_pb2.Frame]:
    return [frame(camera_id, first_seq + i, path.read_bytes(), 1920, 1080) for i, path in enumerate(images)]


async def produce(bootstrap: str, key: str, values: Sequence[bytes]) -> list[tuple[TopicPartition, int]]:
    """Sends each value (in order, keyed by camera) and waits for the broker; returns where each landed."""
    await ensure_topics(bootstrap)
    producer = create_producer(bootstrap, client_id="tests-frames", idempotence=False)
    await producer.start()
    try:
        landed = []
        for value in values:
            meta = await producer.send_and_wait(FRAMES_TOPIC, value=value, key=key.encode())
            landed.append((TopicPartition(meta.topic, meta.partition), meta.offset))
        return landed
    finally:
        await producer.stop()


class DetectionsReader:
    """Reads carmesh.detections.v1 from the start in a group of its own, keeping one camera's messages."""

    def __init__(self, bootstrap: str, camera_id: str) -> None:
        self.bootstrap = bootstrap
        self.camera_id = camera_id
        self.received: list[common_pb2.FrameDetections] = []
        self._consumer = create_consumer(
            bootstrap, DETECTIONS_TOPIC, group_id=f"tests-reader-{uuid.uuid4().hex[:8]}", client_id="tests-reader"
        )

    async def __aenter__(self) -> DetectionsReader:
        await ensure_topics(self.bootstrap)
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def until(
        self, done: Callable[[list[common_pb2.FrameDetections]], bool], timeout_s: float = 120.0
    ) -> list[common_pb2.FrameDetections]:
        """Reads until ``done(received)`` holds; fails after ``timeout_s`` showing what came."""

        async def read_more() -> bool:
            if done(self.received):
                return True
            batches = await self._consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    try:
                        message = common_pb2.FrameDetections.FromString(record.value)
                    except DecodeError:
                        continue  # other tests put garbage on the shared topic on purpose (bad-input tests)
                    if message.camera_id == self.camera_id:
                        self.received.append(message)
            return done(self.received)

        await eventually_async(
            read_more,
            what=f"the expected detections of camera {self.camera_id}",
            timeout_s=timeout_s,
            interval_s=0,  # getmany() itself waits for records
            detail=lambda: f"received {[m.frame_id for m in self.received]}",
        )
        return self.received


async def committed_and_end(bootstrap: str, group_id: str, partitions: set[TopicPartition]) -> dict[int, tuple]:
    """{partition: (committed offset of the group, end offset)} for the given frames partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(list(partitions))
        return {tp.partition: (await consumer.committed(tp), ends[tp]) for tp in partitions}
    finally:
        await consumer.stop()
