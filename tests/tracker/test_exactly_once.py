"""The tracker daemon against real Tansu and PostgreSQL: two cameras of the synthetic street
scene stream their detections while the tracker is killed with SIGKILL mid-stream, or while
the cameras' partitions move between two replicas; the counts in PostgreSQL are the truth."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from carmesh.v1 import common_pb2
from kit.kafka import ensure_topics
from tests.helpers import DaemonProcess
from tests.support import eventually_async
from tracker.store import TrackerStore
from tracking.scenario import CLASS_NAMES, HEIGHT, WIDTH, DetectionNoise, make_scenario, simulate_detections

pytestmark = [pytest.mark.integration]

SEEDS = (0, 1)


def _messages(camera: str, seed: int, start_s: float) -> list[common_pb2.FrameDetections]:
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


def _expected(seed: int) -> dict[tuple[str, str, str], int]:
    return {(n, str(d), CLASS_NAMES[c]): k for (n, d, c), k in make_scenario(seed).true_counts().items()}


class Run:
    def __init__(self, kafka: str, dsn: str) -> None:
        self.kafka, self.dsn = kafka, dsn
        self.topic = f"test.tracker.{uuid.uuid4().hex[:8]}"
        self.cameras = {f"street-{seed}-{uuid.uuid4().hex[:6]}": seed for seed in SEEDS}
        self.args = [
            *("--kafka-bootstrap", kafka, "--detections-topic", self.topic, "--group-id", f"g-{self.topic}"),
            *("--postgres-dsn", dsn, "--kafka-session-timeout-ms", "3000", "--batch-size", "32"),
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
            streams = [_messages(camera, seed, time.time()) for camera, seed in self.cameras.items()]
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
            assert await store.totals(camera) == _expected(seed), camera


@pytest.fixture
async def pool(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def test_sigkill_mid_stream_changes_no_count(kafka_bootstrap: str, postgres_dsn: str, pool: asyncpg.Pool) -> None:
    run = Run(kafka_bootstrap, postgres_dsn)
    await run.setup(pool)
    producing = asyncio.create_task(run.produce())
    first = DaemonProcess("tracker", run.args).start()
    try:
        await eventually_async(lambda: _at_least(run, pool, 300), what="the first replica to count 300 frames")
        first.terminate(signal.SIGKILL)
        assert first.proc is not None and first.proc.wait(10) == -signal.SIGKILL
        at_kill = await run.done(pool)
        assert 300 <= at_kill < 1200
    finally:
        first.stop()
    with DaemonProcess("tracker", run.args):
        await producing
        await eventually_async(lambda: _at_least(run, pool, run.total), what="every frame counted", timeout_s=60)
    await run.check_counts(pool)


async def test_partitions_moving_between_two_replicas_change_no_count(
    kafka_bootstrap: str, postgres_dsn: str, pool: asyncpg.Pool
) -> None:
    run = Run(kafka_bootstrap, postgres_dsn)
    await run.setup(pool)
    producing = asyncio.create_task(run.produce())
    with DaemonProcess("tracker", run.args) as first:
        await eventually_async(lambda: _at_least(run, pool, 150), what="the first replica to count 150 frames")
        with DaemonProcess("tracker", run.args) as second:
            # Both replicas own a partition: the group split the cameras between them.
            await eventually_async(lambda: _owners(run, pool, 2), what="the partitions split over two replicas")
            await eventually_async(lambda: _at_least(run, pool, 700), what="700 frames counted by the pair")
            assert first.stop() == 0, first.log()[-3000:]  # SIGTERM: its partition moves to the second
            await producing
            await eventually_async(lambda: _at_least(run, pool, run.total), what="every frame counted", timeout_s=60)
            await eventually_async(lambda: _owners(run, pool, 1), what="one replica owning both partitions")
            assert "claimed" in second.log()
    await run.check_counts(pool)


async def _at_least(run: Run, pool: asyncpg.Pool, frames: int) -> bool:
    return await run.done(pool) >= frames


async def _owners(run: Run, pool: asyncpg.Pool, count: int) -> bool:
    owners = await pool.fetchval("SELECT count(DISTINCT owner) FROM tracker_offsets WHERE topic = $1", run.topic)
    return bool(owners == count)
