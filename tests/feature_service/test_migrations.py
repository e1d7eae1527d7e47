"""Schema migrations against a real PostgreSQL: applied once under concurrency, append-only."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from feature_service.db import Migration, load_migrations, migrate
from feature_service.errors import MigrationError
from tests.feature_service.support import FreshDatabase

pytestmark = pytest.mark.integration


async def test_replicas_starting_together_apply_each_migration_once(feature_db: FreshDatabase) -> None:
    migrations = load_migrations()
    conns = [await asyncpg.connect(feature_db.dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(conn, migrations) for conn in conns))
        # The advisory lock serialises them: one applies everything, the others find it done.
        assert sorted(results, key=len) == [[], [], [m.name for m in migrations]]
        rows = await conns[0].fetch("SELECT version, name, sha256 FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["name"], r["sha256"]) for r in rows] == [
            (m.version, m.name, m.sha256) for m in migrations
        ]
        tables = {
            r["tablename"] for r in await conns[0].fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {"frames", "annotations", "detection_runs", "predictions", "dataset_snapshots"} <= tables

        # Migrations are append-only: an edited one is refused, a new one is applied.
        edited = [Migration(migrations[0].version, migrations[0].name, migrations[0].sql + "\n-- edited")]
        with pytest.raises(MigrationError, match="append-only"):
            await migrate(conns[0], edited)
        extra = Migration(9999, "9999_test_extra.sql", "CREATE TABLE test_extra (id integer)")
        assert await migrate(conns[0], [*migrations, extra]) == ["9999_test_extra.sql"]
        assert await migrate(conns[0], [*migrations, extra]) == []
    finally:
        for conn in conns:
            await conn.close()


async def test_a_failing_migration_leaves_nothing_behind(feature_db: FreshDatabase) -> None:
    conn = await asyncpg.connect(feature_db.dsn)
    try:
        broken = Migration(9998, "9998_broken.sql", "CREATE TABLE half_done (id integer); SELECT no_such_column;")
        with pytest.raises(asyncpg.PostgresError):
            await migrate(conn, [*load_migrations(), broken])
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE version = 9998") == 0
    finally:
        await conn.close()


async def test_snapshot_rows_cannot_be_updated(feature_db: FreshDatabase) -> None:
    conn = await asyncpg.connect(feature_db.dsn)
    try:
        await migrate(conn, load_migrations())
        await conn.execute(
            """INSERT INTO dataset_snapshots (name, version, filter, val_fraction, seed, keep_source_split,
                   train_frames, val_frames, test_frames, class_names)
               VALUES ('immutable', 1, '{}', 0, 0, false, 0, 0, 0, '{}')"""
        )
        with pytest.raises(asyncpg.RaiseError, match="immutable"):
            await conn.execute("UPDATE dataset_snapshots SET train_frames = 5 WHERE name = 'immutable'")
    finally:
        await conn.close()
