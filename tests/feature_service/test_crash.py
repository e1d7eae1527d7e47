"""Crash safety: the daemon SIGKILLed while it consumes, then restarted, leaves every frame
exactly once in PostgreSQL and complete in the blob store; a SIGTERM commits what it stored."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from pathlib import Path

import pytest

from kit.kafka import FRAMES_TOPIC, ensure_topics
from tests.feature_service.support import (
    FRAMES_GROUP,
    ApolloFrame,
    FreshDatabase,
    Run,
    apollo_message,
    blob_files,
    class_ids,
    committed_offsets,
    daemon_args,
    fetch,
    fetchval,
    produce_frames,
)
from tests.helpers import DaemonProcess
from tests.support import eventually_async

pytestmark = pytest.mark.integration


async def test_sigkill_while_consuming_then_restart_stores_every_frame_once(
    feature_db: FreshDatabase, redis_url: str, kafka_bootstrap: str, apollo: list[ApolloFrame], tmp_path: Path
) -> None:
    await ensure_topics(kafka_bootstrap)
    run = Run.new("crash")
    ids = class_ids(apollo)
    blob_dir = tmp_path / "blobs"
    # Small batches: many commits, so the kill lands between and inside them.
    args = daemon_args(
        dsn=feature_db.dsn,
        redis_url=redis_url,
        kafka_bootstrap=kafka_bootstrap,
        blob_dir=blob_dir,
        extra=["--frames-batch-size", "4"],
    )
    messages = [apollo_message(run, f, i, ids) for i, f in enumerate(apollo)]

    async def stored() -> int:
        return int(await fetchval(feature_db.dsn, "SELECT count(*) FROM frames WHERE dataset = $1", run.dataset))  # type: ignore[arg-type]

    async def at_least(n: int) -> bool:
        return await stored() >= n

    with DaemonProcess("feature_service", args) as first:
        sending = asyncio.create_task(produce_frames(kafka_bootstrap, messages, pause_s=0.03))
        await eventually_async(lambda: at_least(24), what="24 frames stored before the kill", timeout_s=120)
        assert first.proc is not None
        first.proc.kill()  # SIGKILL: no drain, no commit of the batch in hand
        first.proc.wait()
        at_kill = await stored()
    await sending
    assert at_kill < len(apollo), "the kill should land while frames are still being consumed"

    with DaemonProcess("feature_service", args) as second:
        await eventually_async(
            lambda: at_least(len(apollo)), what="every frame stored after the restart", timeout_s=180
        )
        assert await asyncio.to_thread(second.stop) == 0  # SIGTERM: a clean exit

    rows = await fetch(
        feature_db.dsn,
        "SELECT frame_id, image_sha256, kafka_partition, kafka_offset FROM frames WHERE dataset = $1",
        run.dataset,
    )
    assert sorted(r["frame_id"] for r in rows) == sorted(m.frame_id for m in messages)
    # Annotations are written with their frame only: a replayed batch adds none.
    ann = await fetch(
        feature_db.dsn,
        "SELECT a.frame_id FROM annotations a JOIN frames f USING (frame_id) WHERE f.dataset = $1",
        run.dataset,
    )
    assert Counter(a["frame_id"] for a in ann) == Counter({run.frame_id(f): len(f.labels) for f in apollo if f.labels})

    # Every blob is whole (its bytes hash to its name), and every frame's image is there.
    blobs = blob_files(blob_dir)
    assert all(hashlib.sha256(data).hexdigest() == name for name, data in blobs.items())
    assert {f.sha256 for f in apollo} <= set(blobs)
    assert {r["image_sha256"] for r in rows} == {f.sha256 for f in apollo}

    # After the clean stop, everything stored is committed: a restart would not read it again.
    committed = await committed_offsets(kafka_bootstrap, FRAMES_GROUP, FRAMES_TOPIC)
    for partition, offset in {
        r["kafka_partition"]: r["kafka_offset"] for r in sorted(rows, key=lambda r: r["kafka_offset"])
    }.items():
        assert (committed[partition] or 0) > offset
