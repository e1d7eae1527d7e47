"""Stored offsets the partition no longer has: a topic re-created empty (Tansu keeps topics in memory,
so `make down && make up` does this; so does deleting a topic) leaves `tracker_offsets` past the
partition's end. The tracker must track the new records from the partition's start, not wait for
the old offsets (the soak found it skipping 870..2837 new detections per partition)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.helpers import DaemonProcess
from tests.support import eventually_async
from tests.tracker.support import Run

pytestmark = [pytest.mark.integration]


async def test_offsets_past_a_recreated_partitions_end_restart_from_its_start(
    kafka_bootstrap: str, postgres_dsn: str, pool: asyncpg.Pool
) -> None:
    run = Run(kafka_bootstrap, postgres_dsn)
    await run.setup(pool)
    # What a previous life of the topic left: offsets far past the new, empty partitions' ends.
    await pool.executemany(
        "INSERT INTO tracker_offsets (topic, kafka_partition, next_offset, epoch, owner) "
        "VALUES ($1, $2, 50000, 3, 'old')",
        [(run.topic, 0), (run.topic, 1)],
    )
    producing = asyncio.create_task(run.produce())
    with DaemonProcess("tracker", run.args) as tracker:
        await producing
        await eventually_async(
            lambda: _exactly(run, pool),
            what="every new record tracked",
            timeout_s=90,
            detail=lambda: tracker.log()[-2000:],
        )
        assert "past the partition's end" in tracker.log(), tracker.log()[-3000:]
    await run.check_counts(pool)


async def _exactly(run: Run, pool: asyncpg.Pool) -> bool:
    return await run.done(pool) == run.total
