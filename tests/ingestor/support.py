"""Helpers for the ingestor tests: the daemon as a subprocess, reading its topic back, fixtures."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from carmesh.v1 import common_pb2
from kit.kafka import MAX_MESSAGE_BYTES
from tests.helpers import DaemonProcess
from tests.support import eventually_async

APOLLO_SUBDIR = Path("data") / "apollo-cars"


def unique_topic(name: str) -> str:
    return f"carmesh.frames.test-{name}-{uuid.uuid4().hex[:8]}"


def ingestor(bootstrap: str, topic: str, *extra: str, env: dict[str, str] | None = None) -> DaemonProcess:
    """`python -m ingestor` as a user runs it, against the local Tansu (no idempotent producer there)."""
    args = ["--kafka-bootstrap", bootstrap, "--no-kafka-idempotence", "--frames-topic", topic, "--metrics-port", "0"]
    return DaemonProcess("ingestor", [*args, *extra], env=env)


async def read_topic(
    bootstrap: str,
    topic: str,
    keep: Callable[[common_pb2.Frame], bool],
    done: Callable[[list[common_pb2.Frame]], bool] | None = None,
    timeout_s: float = 60.0,
    sent_ms: dict[str, int] | None = None,
) -> list[common_pb2.Frame]:
    """Reads ``topic`` from the start (all partitions, no consumer group), keeping frames that
    pass ``keep``, until ``done(kept)`` holds or, without ``done``, up to the end offsets the
    topic has when the read starts (fails after ``timeout_s`` saying how many came). ``sent_ms``
    collects each kept frame's record timestamp (when the producer sent it), by frame_id."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        fetch_max_bytes=MAX_MESSAGE_BYTES * 4,
    )
    await consumer.start()
    kept: list[common_pb2.Frame] = []

    async def partitions() -> set[int] | None:
        await consumer.topics()  # refreshes metadata
        return consumer.partitions_for_topic(topic)

    try:
        found = await eventually_async(partitions, what=f"topic {topic}", timeout_s=timeout_s, interval_s=0.1)
        assigned = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(assigned)

        async def finished() -> bool:
            if done is not None:
                return done(kept)
            positions = {tp: await consumer.position(tp) for tp in ends}
            return all(positions[tp] >= end for tp, end in ends.items())

        async def read_more() -> bool:
            if await finished():
                return True
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    frame = common_pb2.Frame.FromString(record.value)
                    assert record.key == frame.camera_id.encode(), "frames are keyed by camera_id"
                    if keep(frame):
                        kept.append(frame)
                        if sent_ms is not None:
                            sent_ms[frame.frame_id] = record.timestamp
            return await finished()

        await eventually_async(
            read_more,
            what=f"the matching frames on {topic}",
            timeout_s=timeout_s,
            interval_s=0,  # getmany() itself waits for records
            detail=lambda: f"{len(kept)} matching frames came",
        )
    finally:
        await consumer.stop()
    return kept


def kitti_class_counts(root: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in sorted(root.glob("*/labels/*.txt")):
        for line in label.read_text().splitlines():
            if line.split():
                name = line.split()[0]
                counts[name] = counts.get(name, 0) + 1
    return counts


def class_counts(frames: Sequence[common_pb2.Frame]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for frame in frames:
        for ann in frame.annotations:
            counts[ann.class_name] = counts.get(ann.class_name, 0) + 1
    return counts


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buffer.tobytes()


def png(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    return buffer.tobytes()


def small_apollo_frames(shared: Path, count: int, size: tuple[int, int] = (640, 360)) -> list[np.ndarray]:
    paths = sorted((shared / APOLLO_SUBDIR / "train" / "images").glob("*.jpg"))[:count]
    return [cv2.resize(cv2.imread(str(p)), size, interpolation=cv2.INTER_AREA) for p in paths]


# A frame number drawn as 12 black/white blocks across the top: survives JPEG re-encoding.
_BITS, _BLOCK = 12, 40


def stamp(image: np.ndarray, number: int) -> np.ndarray:
    out = image.copy()
    for bit in range(_BITS):
        value = 255 if number >> bit & 1 else 0
        out[0:_BLOCK, bit * _BLOCK : (bit + 1) * _BLOCK] = value
    return out


def read_stamp(encoded: bytes) -> int:
    image = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_GRAYSCALE)
    number = 0
    for bit in range(_BITS):
        block = image[8 : _BLOCK - 8, bit * _BLOCK + 8 : (bit + 1) * _BLOCK - 8]
        if float(block.mean()) > 127:
            number |= 1 << bit
    return number
