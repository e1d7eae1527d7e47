"""The tracker daemon against real Tansu and PostgreSQL: two cameras of the synthetic street
scene stream their detections while the tracker is killed with SIGKILL mid-stream, or while
the cameras' partitions move between two replicas; the counts in PostgreSQL are the truth."""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import pytest

from tests.helpers import DaemonProcess
from tests.support import eventually_async
from tests.tracker.support import Run

pytestmark = [pytest.mark.integration]


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
