"""The tracker tests' stream: cameras of the synthetic street scene as FrameDetections on a
topic of their own, produced at a pace, and the truth to compare the counts with."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
from aiokafka import AIOKafkaProducer

from carmesh.v1 import common_pb2
from kit.kafka import ensure_topics
from tracker.store import TrackerStore
from tracking.scenario import CLASS_NAMES, HEIGHT, WIDTH, DetectionNoise, make_scenario, simulate_detections

SEEDS = (0, 1)


def messages_of(camera: str, seed: int, start_s: float) -> list[common_pb2.FrameDetections]:
    scenario = make_scenario(seed)
    messages = []
    for frame in simulate_detections(scenario.truth(), DetectionNoise(), seed=seed):
        message = common_pb2.FrameDetections(
            frame_id=f"{camera}-{frame.seq}", camera_id=camera, seq=frame.seq, image_width=WIDTH, image_height=HEIGHT
        )
        at = start_s + frame.timestamp_s
        message.captured_at.seconds, message.captured_at.nanos = int(at), round((at % 1) * 1e9)
        for (x1, y1, x2, y2), score, class_id in zip(frame.boxes_xyxy, frame.scores, frame.class_ids, strict=True):
            message.detections.add(score=score, class_id=int(class_id), class_name=CLASS_NAMES[class_id]).box.CopyFrom(
                common_pb2.BoundingBox(x1=x1, y1=y1, x2=x2, y2=y2)
            )
        messages.append(message)
    return messages


def expected_counts(seed: int) -> dict[tuple[str, str, str], int]:
    return {(n, str(d), CLASS_NAMES[c]): k for (n, d, c), k in make_scenario(seed).true_counts().items()}


class Run:
    def __init__(self, kafka: str, dsn: str) -> None:
        self.kafka, self.dsn = kafka, dsn
        self.topic = f"test.tracker.{uuid.uuid4().hex[:8]}"
        self.cameras = {f"street-{seed}-{uuid.uuid4().hex[:6]}": seed for seed in SEEDS}
        self.args = [
            *("--kafka-bootstrap", kafka, "--detections-topic", self.topic, "--group-id", f"g-{self.topic}"),
            *("--postgres-dsn", dsn, "--kafka-session-timeout-ms", "3000", "--batch-size", "32"),
            *("--events-topic", f"{self.topic}.events", "--tracks-topic", f"{self.topic}.tracks"),
            "--no-kafka-idempotence",
        ]
        self.total = 0

    async def setup(self, pool: asyncpg.Pool) -> None:
        await ensure_topics(self.kafka, {self.topic: 2})
        store = TrackerStore(pool)
        await store.create_schema()
        for camera, seed in self.cameras.items():
            await store.set_layout(camera, make_scenario(seed).layout, WIDTH, HEIGHT)

    async def produce(self) -> None:
        """Both cameras' 600 frames interleaved at ~400 messages/s, so that a kill or a rebalance
        lands mid-stream (the pacing sleep is part of the test)."""
        producer = AIOKafkaProducer(bootstrap_servers=self.kafka, acks="all")
        await producer.start()
        try:
            streams = [messages_of(camera, seed, time.time()) for camera, seed in self.cameras.items()]
            for i, frames in enumerate(zip(*streams, strict=True)):
                for message in frames:
                    await producer.send(self.topic, message.SerializeToString(), key=message.camera_id.encode())
                    self.total += 1
                if i == 100:  # hostile records on the cameras' partitions: skipped, counted, committed
                    key = next(iter(self.cameras)).encode()
                    for value in (b"\xff" * 8, common_pb2.FrameDetections(seq=5).SerializeToString()):
                        await producer.send(self.topic, value, key=key)
                        self.total += 1
                if i % 10 == 9:
                    await producer.flush()
                    await asyncio.sleep(0.05)
            await producer.flush()
        finally:
            await producer.stop()

    async def done(self, pool: asyncpg.Pool) -> int:
        value = await pool.fetchval(
            "SELECT coalesce(sum(next_offset), 0) FROM tracker_offsets WHERE topic = $1", self.topic
        )
        return int(value)

    async def check_counts(self, pool: asyncpg.Pool) -> None:
        store = TrackerStore(pool)
        for camera, seed in self.cameras.items():
            assert await store.totals(camera) == expected_counts(seed), camera
