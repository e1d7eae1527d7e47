"""PostgreSQL going away mid-stream: the tracker keeps its process, replays from what was
committed once PostgreSQL is back, and the counts are still exactly the truth."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from devstack import services
from devstack.procs import Process
from tests.helpers import DaemonProcess, free_port
from tests.support import eventually_async
from tests.tracker.support import Run

pytestmark = [pytest.mark.integration]


@pytest.fixture
def own_postgres(stack_config: services.StackConfig) -> Iterator[tuple[services.StackConfig, Process]]:
    """A PostgreSQL of this test's own, to stop and start (the session's serves other tests)."""
    run_dir = Path(tempfile.mkdtemp(prefix="carmesh-outage-"))
    run_dir.chmod(0o755)
    cfg = dataclasses.replace(
        stack_config, run_dir=run_dir, ports=dataclasses.replace(stack_config.ports, postgres=free_port())
    )
    proc = services.postgres(cfg)
    proc.start()
    proc.wait_ready()
    services.create_databases(cfg, ("carmesh",))
    try:
        yield cfg, proc
    finally:
        proc.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


async def test_a_postgres_outage_mid_stream_changes_no_count(kafka_bootstrap: str, own_postgres) -> None:
    cfg, postgres = own_postgres
    dsn = cfg.postgres_dsn_with_password()
    run = Run(kafka_bootstrap, dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await run.setup(pool)
        producing = asyncio.create_task(run.produce())
        with DaemonProcess("tracker", [*run.args, "--postgres-start-timeout-s", "5"]) as tracker:
            await eventually_async(lambda: _at_least(run, pool, 200), what="200 frames counted")
            assert await run.done(pool) < 1000  # mid-stream
            await pool.close()
            await asyncio.to_thread(postgres.stop)
            await asyncio.sleep(2)  # the outage itself: the tracker's batches fail meanwhile
            await asyncio.to_thread(postgres.start)
            await asyncio.to_thread(postgres.wait_ready)
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
            await producing
            await eventually_async(lambda: _at_least(run, pool, run.total), what="every frame counted", timeout_s=90)
            assert tracker.proc is not None and tracker.proc.poll() is None
            assert "failed" in tracker.log() or "unavailable" in tracker.log().lower(), tracker.log()[-2000:]
        await run.check_counts(pool)
    finally:
        await pool.close()


async def _at_least(run: Run, pool: asyncpg.Pool, frames: int) -> bool:
    return await run.done(pool) >= frames
