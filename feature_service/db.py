"""PostgreSQL plumbing: which errors are an outage (retry) rather than a bad row, the pool, and
schema migrations (numbered SQL files applied at start, once, under an advisory lock)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import redis.exceptions

from feature_service.errors import MigrationError, StoreUnavailable
from kit.backoff import Backoff
from kit.redact import redact_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# One constant key: every replica migrating at once queues on it ("carmesh-fs" in ASCII).
MIGRATION_LOCK_KEY = 0x63_61_72_6D_2D_66_73

_TRANSIENT_PG = (
    asyncpg.exceptions.PostgresConnectionError,  # class 08
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)

# OS errors that say "this write can never succeed" rather than "the disk is away": the record
# is the problem (too big for the file system, a name it refuses), so retrying would stall.
_PERMANENT_ERRNOS = frozenset({errno.EFBIG, errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.EINVAL})


def is_transient(exc: BaseException) -> bool:
    """True for an outage of a store (retry later), False for a problem with the data itself."""
    if isinstance(exc, asyncpg.exceptions.InterfaceError) and isinstance(exc, ValueError):
        return False  # a value the client cannot encode (asyncpg's own DataError): the data, not an outage
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        # A connection closed under us is an outage; overlapping operations on one connection are a bug.
        return "another operation is in progress" not in str(exc)
    if isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNOS:
        return False
    return isinstance(
        exc,
        (
            OSError,
            TimeoutError,
            *_TRANSIENT_PG,
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        ),
    )


@contextlib.asynccontextmanager
async def unavailable_as(store: str) -> AsyncIterator[None]:
    """Turns an outage of ``store`` into UNAVAILABLE for RPCs."""
    try:
        yield
    except Exception as exc:
        if is_transient(exc):
            raise StoreUnavailable(f"{store} is unavailable, try again later: {type(exc).__name__}: {exc}") from exc
        raise


def redact(dsn: str) -> str:
    """The DSN without its password, for logs (the kit's one redaction)."""
    return redact_url(dsn)


async def create_pool(dsn: str, max_size: int, start_timeout_s: float, password: str | None = None) -> asyncpg.Pool:
    """Waits up to ``start_timeout_s`` for PostgreSQL, then raises ConnectionError with the cause."""
    deadline = time.monotonic() + start_timeout_s
    delays = Backoff(0.25, 5.0).delays()
    while True:
        try:
            pool = await asyncpg.create_pool(
                dsn, password=password, min_size=1, max_size=max_size, timeout=10.0, command_timeout=60.0
            )
        except Exception as exc:
            if not is_transient(exc) and not isinstance(exc, asyncpg.exceptions.InvalidCatalogNameError):
                raise
            delay = next(delays)
            if time.monotonic() + delay > deadline:
                raise ConnectionError(
                    f"PostgreSQL at {redact(dsn)} not usable after {start_timeout_s:.0f}s: {type(exc).__name__}: {exc}"
                ) from exc
            log.warning("waiting for PostgreSQL at %s: %s", redact(dsn), exc)
            await asyncio.sleep(delay)
            continue
        assert pool is not None
        return pool


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name} is not named NNNN_lowercase_words.sql")
        found.append(Migration(int(match.group(1)), path.name, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number in {directory}")
    return found


async def migrate(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    """Applies the pending migrations in one transaction; returns the names applied.

    An applied migration whose file changed since is an error: migrations are append-only.
    """
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   sha256 text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, name, sha256 FROM schema_migrations")
        applied = {row["version"]: row for row in rows}
        for migration in migrations:
            row = applied.pop(migration.version, None)
            if row is not None:
                if row["sha256"] != migration.sha256:
                    raise MigrationError(
                        f"migration {migration.name} was applied as {row['name']} with different contents; "
                        "migrations are append-only: add a new file instead of editing one"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, sha256) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.sha256,
            )
            applied_now.append(migration.name)
        if applied:
            # A newer deployment migrated this database; additive migrations keep it readable.
            log.warning("database has migrations this build does not know: %s", sorted(applied))
    return applied_now
