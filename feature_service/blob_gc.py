"""Garbage collection of the local blob store: removes image blobs that no frame row references
(frames dead-lettered after their image was stored, batches cut short by a crash...).

Safe against concurrent writes. A consumer stores a frame as put(blob), then INSERT of the row,
and every store attempt puts again (put() touches a blob that already exists). The collector:

1. lists blobs whose mtime is older than ``min_age_s`` (the grace);
2. asks PostgreSQL which of them a frame row references, and keeps those;
3. renames each remaining blob into ``trash/`` (atomic): from then on a put() of the same image
   finds no file and writes it again;
4. stats the renamed file: if its mtime is now within the grace, a put() touched it before the
   rename, its row is on the way, and the blob is moved back; otherwise it is deleted.

So a blob is deleted only when no put() touched it within the grace, and a row is inserted only
right after a put() of the same attempt: nothing a row references can disappear as long as one
store attempt (put, then insert) takes less than the grace (1 hour by default; at least 60 s).
Readers of rows (StreamDataset) are unaffected: a referenced blob is never collected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg

from feature_service.blobs import LocalBlobStore
from feature_service.metrics import FeatureMetrics
from kit.backoff import wait_event

log = logging.getLogger(__name__)

_REFERENCED = "SELECT DISTINCT image_sha256 FROM frames WHERE image_sha256 = ANY($1::text[])"
_HEX = frozenset("0123456789abcdef")
_PAGE = 1000


@dataclass
class GcResult:
    scanned: int = 0  # blob files seen
    referenced: int = 0  # old enough, but a frame row references them
    removed: int = 0
    removed_bytes: int = 0
    kept_bytes: int = 0  # what the store holds afterwards
    raced: int = 0  # touched by a put() during the run, so moved back


def _is_digest(name: str) -> bool:
    return len(name) == 64 and set(name) <= _HEX


class BlobCollector:
    def __init__(
        self,
        store: LocalBlobStore,
        pool: asyncpg.Pool,
        *,
        min_age_s: float,
        interval_s: float,
        metrics: FeatureMetrics | None = None,
    ) -> None:
        self._store = store
        self._pool = pool
        self._min_age_s = min_age_s
        self._interval_s = interval_s
        self._metrics = metrics
        self._trash = store.root / "trash"
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval_s > 0:
            self._task = asyncio.create_task(self._run(), name="blob gc")

    async def close(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not await wait_event(self._stopping, self._interval_s):
            try:
                await self.collect()
            except Exception:  # PostgreSQL down, a disk error: the next run tries again
                log.exception("blob garbage collection failed; trying again in %.0fs", self._interval_s)

    def _blobs(self) -> Iterator[tuple[str, os.stat_result]]:
        for path in (self._store.root / "sha256").glob("*/*/*"):
            if not _is_digest(path.name):
                continue
            with contextlib.suppress(FileNotFoundError):
                yield path.name, path.stat()

    async def collect(self) -> GcResult:
        """One pass over the store; returns what it did."""
        started = time.monotonic()
        result = GcResult()
        cutoff = time.time() - self._min_age_s
        old: dict[str, int] = {}
        for digest, st in await asyncio.to_thread(lambda: list(self._blobs())):
            result.scanned += 1
            result.kept_bytes += st.st_size
            if st.st_mtime < cutoff:
                old[digest] = st.st_size
        digests = sorted(old)
        for start in range(0, len(digests), _PAGE):
            page = digests[start : start + _PAGE]
            async with self._pool.acquire() as conn:
                referenced = {row[0] for row in await conn.fetch(_REFERENCED, page)}
            result.referenced += len(referenced)
            for digest in page:
                if digest in referenced:
                    continue
                removed = await asyncio.to_thread(self.remove_if_unused, digest)
                if removed:
                    result.removed += 1
                    result.removed_bytes += old[digest]
                    result.kept_bytes -= old[digest]
                else:
                    result.raced += 1
        if self._metrics is not None:
            self._metrics.blob_gc_runs.inc()
            self._metrics.blob_gc_removed.inc(result.removed)
            self._metrics.blob_gc_removed_bytes.inc(result.removed_bytes)
            self._metrics.blob_store_bytes.set(result.kept_bytes)
        log.info(
            "blob gc: %d blobs, %d old and referenced, %d removed (%d bytes), %d touched meanwhile, in %.1fs",
            result.scanned,
            result.referenced,
            result.removed,
            result.removed_bytes,
            result.raced,
            time.monotonic() - started,
        )
        return result

    def remove_if_unused(self, digest: str) -> bool:
        """Steps 3 and 4 for a blob no row referenced: True when deleted (blocking)."""
        target = self._store.path_for(digest)
        parked = self._trash / f"{digest}.{os.getpid()}"
        self._trash.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(target, parked)
        except FileNotFoundError:
            return False  # collected by another replica, or never there
        if parked.stat().st_mtime >= time.time() - self._min_age_s:
            # A put() touched it before the rename: its row is coming. Back it goes (a put() that
            # wrote the same bytes since is identical, so replacing it is harmless).
            os.replace(parked, target)
            return False
        parked.unlink()
        return True
