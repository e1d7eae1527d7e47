"""The blob garbage collector against a real PostgreSQL and a real blob directory: it removes
only blobs that are old and that no frame row references, and a concurrent writer (put, then
insert the row) never ends up with a row whose blob is gone."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from feature_service import db
from feature_service.blob_gc import BlobCollector
from feature_service.blobs import LocalBlobStore
from tests.feature_service.support import FreshDatabase

pytestmark = pytest.mark.integration

HOUR_S = 3600.0


@pytest.fixture
async def pool(feature_db: FreshDatabase) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(feature_db.dsn, min_size=1, max_size=4)
    assert pool is not None
    async with pool.acquire() as conn:
        await db.migrate(conn, db.load_migrations())
    try:
        yield pool
    finally:
        await pool.close()


def _store(tmp_path: Path) -> LocalBlobStore:
    store = LocalBlobStore(tmp_path / "blobs")
    store.open()
    return store


def _age(store: LocalBlobStore, digest: str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(store.path_for(digest), (then, then))


async def _insert_frame(conn: asyncpg.Connection, digest: str, size: int) -> None:
    await conn.execute(
        "INSERT INTO frames (frame_id, camera_id, captured_at, encoding, width, height, image_sha256, image_bytes,"
        " brightness, contrast, sharpness) VALUES ($1, 'cam-gc', now(), 'png', 1, 1, $2, $3, 0, 0, 0)",
        f"gc-{uuid.uuid4().hex}",
        digest,
        size,
    )


async def test_only_old_blobs_no_frame_references_are_removed(pool: asyncpg.Pool, tmp_path: Path) -> None:
    store = _store(tmp_path)
    referenced = store.put(b"referenced" * 100)
    orphan = store.put(b"orphan" * 100)
    young = store.put(b"young orphan" * 100)
    _age(store, referenced, 2 * HOUR_S)
    _age(store, orphan, 2 * HOUR_S)
    async with pool.acquire() as conn:
        await _insert_frame(conn, referenced, 1000)
    (store.root / "sha256" / "zz").mkdir()  # not a blob: never touched
    collector = BlobCollector(store, pool, min_age_s=HOUR_S, interval_s=0)

    result = await collector.collect()

    assert (result.scanned, result.referenced, result.removed, result.removed_bytes) == (3, 1, 1, 600)
    assert result.kept_bytes == 1000 + 1200
    assert store.exists(referenced) and store.exists(young) and not store.exists(orphan)
    assert (store.root / "sha256" / "zz").is_dir()
    assert list((store.root / "trash").iterdir()) == []
    assert (await collector.collect()).removed == 0


def test_a_put_before_the_removal_keeps_the_blob_and_one_after_writes_it_again(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = b"frame image" * 50
    digest = store.put(data)
    collector = BlobCollector(store, pool=None, min_age_s=HOUR_S, interval_s=0)  # type: ignore[arg-type]

    _age(store, digest, 2 * HOUR_S)
    store.put(data)  # between the collector's query and its rename: the row is on its way
    assert collector.remove_if_unused(digest) is False
    assert store.get(digest) == data

    _age(store, digest, 2 * HOUR_S)
    assert collector.remove_if_unused(digest) is True
    assert not store.exists(digest)
    assert store.put(data) == digest  # a put after the removal finds nothing and writes it again
    assert store.get(digest) == data


async def test_a_concurrent_writer_never_loses_a_referenced_blob(pool: asyncpg.Pool, tmp_path: Path) -> None:
    """Old orphan blobs are re-put and referenced by new rows while collectors run back to back:
    at the end every referenced blob is there, whole, and every unreferenced one is gone."""
    store = _store(tmp_path)
    images = [f"image {i} ".encode() * 40 for i in range(60)]
    digests = [store.put(data) for data in images]
    for digest in digests:
        _age(store, digest, 2 * HOUR_S)
    used = random.Random(5).sample(range(len(images)), 40)
    collector = BlobCollector(store, pool, min_age_s=1.0, interval_s=0)
    writing = True

    async def writer() -> None:
        nonlocal writing
        async with pool.acquire() as conn:
            for i in used:
                await asyncio.to_thread(store.put, images[i])
                await _insert_frame(conn, digests[i], len(images[i]))
                await asyncio.sleep(0.005)  # sleep is the test: spreads the writes over several collections
        writing = False

    async def collectors() -> int:
        runs = 0
        while writing:
            await collector.collect()
            runs += 1
        return runs

    _, runs = await asyncio.gather(writer(), collectors())
    assert runs >= 2
    for i in used:
        assert store.get(digests[i]) == images[i]
    # Once the grace has passed, a last collection removes exactly the blobs no row references.
    for digest in digests:
        if store.exists(digest):
            _age(store, digest, 2 * HOUR_S)
    await collector.collect()
    assert {d for d in digests if store.exists(d)} == {digests[i] for i in used}
