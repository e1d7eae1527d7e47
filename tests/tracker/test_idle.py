"""Idle cameras leave the tracker's memory and come back from their checkpoints: camera A streams
half its video, goes quiet while camera B streams all of its own (A is dropped from memory), then A
streams the rest; both cameras' counts are still the truth. And the counts retention deletes old
minutes only."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from tests.helpers import DaemonProcess
from tests.support import eventually_async
from tests.tracker.support import Run, messages_of
from tracker.store import TrackerStore

pytestmark = [pytest.mark.integration]


async def _send(producer: AIOKafkaProducer, run: Run, messages: list) -> None:
    for i, message in enumerate(messages):
        await producer.send(run.topic, message.SerializeToString(), key=message.camera_id.encode())
        run.total += 1
        if i % 20 == 19:
            await producer.flush()
            await asyncio.sleep(0.02)  # paced, so batches keep coming while the other camera is quiet
    await producer.flush()


async def test_an_idle_camera_leaves_memory_and_resumes_from_its_checkpoint(
    kafka_bootstrap: str, postgres_dsn: str, pool: asyncpg.Pool
) -> None:
    run = Run(kafka_bootstrap, postgres_dsn)
    await run.setup(pool)
    (camera_a, seed_a), (camera_b, seed_b) = run.cameras.items()
    a = messages_of(camera_a, seed_a, time.time())
    b = messages_of(camera_b, seed_b, time.time())
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        with DaemonProcess("tracker", [*run.args, "--idle-camera-s", "1"]) as tracker:
            await _send(producer, run, a[:300])
            await eventually_async(lambda: _done(run, pool, 300), what="camera A's first half counted")
            await asyncio.sleep(1.5)  # the test: camera A idle for longer than --idle-camera-s
            await _send(producer, run, b)  # B's batches find A idle and drop it
            await eventually_async(lambda: _done(run, pool, 900), what="camera B counted")
            assert "dropped 1 idle camera(s)" in tracker.log(), tracker.log()[-3000:]
            await _send(producer, run, a[300:])
            await eventually_async(lambda: _done(run, pool, run.total), what="every frame counted", timeout_s=60)
    finally:
        await producer.stop()
    await run.check_counts(pool)


async def test_counts_retention_deletes_only_minutes_before_the_cutoff(pool: asyncpg.Pool) -> None:
    store = TrackerStore(pool)
    await store.create_schema()
    camera = f"retention-{time.time_ns()}"
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    old = [now - timedelta(days=40, minutes=i) for i in range(25)]
    recent = [now - timedelta(days=10, minutes=i) for i in range(3)]
    await pool.executemany(
        "INSERT INTO tracker_counts (camera_id, minute, name, direction, class_name, count) "
        "VALUES ($1, $2, 'gate', 'in', 'car', 1)",
        [(camera, minute) for minute in old + recent],
    )
    # Batches of 10 rows: three rounds for 25 old rows.
    assert await store.delete_counts_before(now - timedelta(days=30), batch_rows=10) == 25
    left = await pool.fetchval("SELECT count(*) FROM tracker_counts WHERE camera_id = $1", camera)
    assert left == 3
    assert await store.delete_counts_before(now - timedelta(days=30), batch_rows=10) == 0


async def _done(run: Run, pool: asyncpg.Pool, frames: int) -> bool:
    return await run.done(pool) >= frames
