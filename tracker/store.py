"""The tracker's PostgreSQL: layouts (versioned), per-camera checkpoints, per-partition offsets
with an owner epoch, and per-minute counts; a batch's counts, checkpoints and next offsets are
written in one transaction, so a restart or a rebalance neither loses nor double-counts.

Fencing: a replica that is assigned a partition bumps its epoch; every batch commits only
``WHERE epoch = mine``. A replica that lost the partition (paused past its session, then woke
up) finds its epoch stale, rolls back, and drops the partition's cameras.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from tracking.geometry import Layout, validate_layout

log = logging.getLogger(__name__)

# "carmesh-tr" in ASCII: replicas creating the schema at once queue on it.
SCHEMA_LOCK_KEY = 0x63_61_72_6D_2D_74_72
SCHEMA = """
CREATE TABLE IF NOT EXISTS tracker_layouts (
    camera_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    layout JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (camera_id, version)
);
CREATE TABLE IF NOT EXISTS tracker_offsets (
    topic TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    next_offset BIGINT NOT NULL DEFAULT 0,
    epoch BIGINT NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (topic, kafka_partition)
);
CREATE TABLE IF NOT EXISTS tracker_checkpoints (
    camera_id TEXT PRIMARY KEY,
    layout_version INTEGER NOT NULL,
    state JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS tracker_counts (
    camera_id TEXT NOT NULL,
    minute TIMESTAMPTZ NOT NULL,
    name TEXT NOT NULL,
    direction TEXT NOT NULL,
    class_name TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (camera_id, minute, name, direction, class_name)
);
"""


# The SQL of each bucket's start (a fixed set: nothing from a request is put into SQL text).
_BUCKET_SQL = {
    "minute": "date_trunc('minute', minute)",
    "hour": "date_trunc('hour', minute)",
    "total": "$2::timestamptz",
}


class Fenced(Exception):
    """Another replica owns the partition now (a newer epoch): the batch was rolled back."""


@dataclass(frozen=True)
class StoredLayout:
    camera_id: str
    version: int
    width: int
    height: int
    layout: Layout


@dataclass(frozen=True)
class Claim:
    epoch: int
    next_offset: int


# (camera, minute start, line or zone, direction, class name) -> count
CountDeltas = Mapping[tuple[str, datetime, str, str, str], int]


def minute_of(timestamp_s: float) -> datetime:
    return datetime.fromtimestamp(timestamp_s - timestamp_s % 60, UTC)


def _layout_json(layout: Layout) -> str:
    return json.dumps(
        {
            "lines": [[x.name, list(x.start), list(x.end)] for x in layout.lines],
            "zones": [[z.name, [list(p) for p in z.polygon]] for z in layout.zones],
        }
    )


def _layout_of(raw: str, width: int, height: int) -> Layout:
    data = json.loads(raw)
    return validate_layout(
        [(n, tuple(a), tuple(b)) for n, a, b in data["lines"]], [(n, p) for n, p in data["zones"]], width, height
    )


async def create_pool(dsn: str, max_size: int, start_timeout_s: float, password: str | None) -> asyncpg.Pool:
    """Waits up to ``start_timeout_s`` for PostgreSQL to accept connections."""
    deadline = time.monotonic() + start_timeout_s
    delay_s = 0.25
    while True:
        try:
            return await asyncpg.create_pool(dsn, password=password, min_size=1, max_size=max_size, timeout=10.0)
        except (OSError, asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.CannotConnectNowError) as exc:
            if time.monotonic() + delay_s > deadline:
                raise ConnectionError(f"PostgreSQL not usable after {start_timeout_s:.0f}s: {exc}") from exc
            log.warning("waiting for PostgreSQL: %s", exc)
            await asyncio.sleep(delay_s)
            delay_s = min(5.0, delay_s * 2)


class TrackerStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create_schema(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY)
            await conn.execute(SCHEMA)

    # -- layouts ------------------------------------------------------------------------

    async def set_layout(
        self, camera_id: str, layout: Layout, width: int, height: int, expected_version: int = 0
    ) -> int:
        """Stores a validated layout as the camera's next version; returns that version, or -1
        when ``expected_version`` (> 0) is not the newest one."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", camera_id)
            newest: int = await conn.fetchval(
                "SELECT coalesce(max(version), 0) FROM tracker_layouts WHERE camera_id = $1", camera_id
            )
            if expected_version > 0 and expected_version != newest:
                return -1
            version = newest + 1
            await conn.execute(
                "INSERT INTO tracker_layouts (camera_id, version, width, height, layout) VALUES ($1, $2, $3, $4, $5)",
                camera_id,
                version,
                width,
                height,
                _layout_json(layout),
            )
        return version

    async def list_layouts(self, camera_id: str, limit: int) -> list[tuple[StoredLayout, datetime]]:
        rows = await self.pool.fetch(
            "SELECT camera_id, version, width, height, layout::text AS layout, created_at FROM tracker_layouts "
            "WHERE camera_id = $1 ORDER BY version DESC LIMIT $2",
            camera_id,
            limit,
        )
        return [
            (
                StoredLayout(
                    r["camera_id"],
                    r["version"],
                    r["width"],
                    r["height"],
                    _layout_of(r["layout"], r["width"], r["height"]),
                ),
                r["created_at"],
            )
            for r in rows
        ]

    async def latest_layouts(self, camera_ids: Iterable[str]) -> dict[str, StoredLayout]:
        rows = await self.pool.fetch(
            "SELECT DISTINCT ON (camera_id) camera_id, version, width, height, layout::text AS layout "
            "FROM tracker_layouts WHERE camera_id = ANY($1::text[]) ORDER BY camera_id, version DESC",
            list(camera_ids),
        )
        return {
            r["camera_id"]: StoredLayout(
                r["camera_id"], r["version"], r["width"], r["height"], _layout_of(r["layout"], r["width"], r["height"])
            )
            for r in rows
        }

    # -- partitions and checkpoints -------------------------------------------------------

    async def claim(self, topic: str, partition: int, owner: str) -> Claim:
        """Takes a partition over: a new epoch (fencing the previous owner) and where to resume."""
        row = await self.pool.fetchrow(
            "INSERT INTO tracker_offsets (topic, kafka_partition, epoch, owner) VALUES ($1, $2, 1, $3) "
            "ON CONFLICT (topic, kafka_partition) DO UPDATE SET epoch = tracker_offsets.epoch + 1, owner = $3 "
            "RETURNING epoch, next_offset",
            topic,
            partition,
            owner,
        )
        assert row is not None
        return Claim(int(row["epoch"]), int(row["next_offset"]))

    async def move_offset(self, topic: str, partition: int, epoch: int, next_offset: int) -> None:
        """Sets a claimed partition's next offset (a reset: the stored one is gone from Kafka); Fenced
        when the epoch is no longer ours."""
        updated = await self.pool.fetchval(
            "UPDATE tracker_offsets SET next_offset = $4 WHERE topic = $1 AND kafka_partition = $2 AND epoch = $3 "
            "RETURNING 1",
            topic,
            partition,
            epoch,
            next_offset,
        )
        if updated is None:
            raise Fenced(f"{topic}[{partition}] belongs to a newer epoch than {epoch}")

    async def checkpoints(self, camera_ids: Iterable[str]) -> dict[str, tuple[int, dict[str, Any]]]:
        rows = await self.pool.fetch(
            "SELECT camera_id, layout_version, state::text AS state FROM tracker_checkpoints "
            "WHERE camera_id = ANY($1::text[])",
            list(camera_ids),
        )
        return {r["camera_id"]: (int(r["layout_version"]), json.loads(r["state"])) for r in rows}

    async def commit_batch(
        self,
        topic: str,
        offsets: Mapping[int, tuple[int, int]],
        checkpoints: Mapping[str, tuple[int, dict[str, Any]]],
        counts: CountDeltas,
    ) -> None:
        """One transaction: count deltas, checkpoints, and each partition's next offset if its
        epoch is still ours (``offsets``: partition -> (epoch, next offset)); else Fenced."""
        async with self.pool.acquire() as conn, conn.transaction():
            for partition, (epoch, next_offset) in sorted(offsets.items()):
                updated = await conn.fetchval(
                    "UPDATE tracker_offsets SET next_offset = $4 WHERE topic = $1 AND kafka_partition = $2 "
                    "AND epoch = $3 RETURNING 1",
                    topic,
                    partition,
                    epoch,
                    next_offset,
                )
                if updated is None:
                    raise Fenced(f"{topic}[{partition}] belongs to a newer epoch than {epoch}")
            if counts:
                await conn.executemany(
                    "INSERT INTO tracker_counts (camera_id, minute, name, direction, class_name, count) "
                    "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (camera_id, minute, name, direction, class_name) "
                    "DO UPDATE SET count = tracker_counts.count + EXCLUDED.count",
                    [(*key, n) for key, n in sorted(counts.items())],
                )
            if checkpoints:
                await conn.executemany(
                    "INSERT INTO tracker_checkpoints (camera_id, layout_version, state, updated_at) "
                    "VALUES ($1, $2, $3, now()) ON CONFLICT (camera_id) DO UPDATE "
                    "SET layout_version = EXCLUDED.layout_version, state = EXCLUDED.state, updated_at = now()",
                    [(camera, version, json.dumps(state)) for camera, (version, state) in sorted(checkpoints.items())],
                )

    async def counts(
        self, camera_id: str, since: datetime, until: datetime, bucket: str
    ) -> list[tuple[datetime, str, str, str, int]]:
        """(bucket start, name, direction, class name, count) in [since, until); bucket is
        ``minute``, ``hour`` or ``total`` (one bucket starting at ``since``)."""
        start = _BUCKET_SQL[bucket]
        rows = await self.pool.fetch(
            f"SELECT {start} AS bucket_start, name, direction, class_name, sum(count)::bigint AS n "
            "FROM tracker_counts WHERE camera_id = $1 AND minute >= $2 AND minute < $3 "
            "GROUP BY 1, name, direction, class_name ORDER BY 1, name, direction, class_name",
            camera_id,
            since,
            until,
        )
        return [(r["bucket_start"], r["name"], r["direction"], r["class_name"], int(r["n"])) for r in rows]

    async def totals(self, camera_id: str) -> dict[tuple[str, str, str], int]:
        """All-time counts of a camera per (line or zone, direction, class name)."""
        rows = await self.pool.fetch(
            "SELECT name, direction, class_name, sum(count)::bigint AS n FROM tracker_counts "
            "WHERE camera_id = $1 GROUP BY name, direction, class_name",
            camera_id,
        )
        return {(r["name"], r["direction"], r["class_name"]): int(r["n"]) for r in rows}

    async def delete_counts_before(self, cutoff: datetime, batch_rows: int = 10_000) -> int:
        """Deletes per-minute counts of minutes before ``cutoff``, ``batch_rows`` at a time (short
        transactions beside the consumer's); returns the rows deleted."""
        deleted = 0
        while True:
            status = await self.pool.execute(
                "DELETE FROM tracker_counts WHERE ctid IN (SELECT ctid FROM tracker_counts WHERE minute < $1 LIMIT $2)",
                cutoff,
                batch_rows,
            )
            rows = int(status.split()[-1])  # "DELETE n"
            deleted += rows
            if rows < batch_rows:
                return deleted
