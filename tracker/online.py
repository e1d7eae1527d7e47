"""The online view of each camera's counts in Redis, rewritten after every committed batch.

One hash per camera, ``carmesh:tracking:CAMERA`` (a name: no ``:`` inside, kit/names.py):
- ``occupancy:ZONE``: tracks inside the zone now;
- ``flow_1m:NAME:DIRECTION`` and ``flow_1h:NAME:DIRECTION``: counts in the minute bucket of
  the camera's newest frame, and in the 60 minute buckets ending with it (all classes);
- ``updated_at``: that frame's capture time (ISO 8601).
Values are set, never incremented, from what PostgreSQL committed: a replayed batch writes the
same values again. Redis being down costs only freshness (the next batch rewrites the hash).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import redis.asyncio as aioredis
import redis.exceptions

from tracker.store import TrackerStore

log = logging.getLogger(__name__)

KEY_PREFIX = "carmesh:tracking:"


class OnlineCounts:
    def __init__(self, client: aioredis.Redis, store: TrackerStore, ttl_s: int) -> None:
        self._client = client
        self._store = store
        self._ttl_s = ttl_s

    @classmethod
    def from_url(cls, url: str, store: TrackerStore, ttl_s: int, password: str | None = None) -> OnlineCounts:
        client = aioredis.Redis.from_url(
            url, password=password, decode_responses=True, socket_timeout=5.0, socket_connect_timeout=5.0
        )
        return cls(client, store, ttl_s)

    async def close(self) -> None:
        await self._client.aclose()

    async def update(self, camera_id: str, newest: datetime, occupancy: dict[str, int]) -> None:
        minute = newest.replace(second=0, microsecond=0)
        last_hour = await self._store.counts(
            camera_id, minute - timedelta(minutes=59), minute + timedelta(minutes=1), "minute"
        )
        fields: dict[str, str | int] = {"updated_at": newest.isoformat()}
        for zone, inside in occupancy.items():
            fields[f"occupancy:{zone}"] = inside
        hour: dict[str, int] = {}
        last: dict[str, int] = {}
        for start, name, direction, _, count in last_hour:
            key = f"{name}:{direction}"
            hour[key] = hour.get(key, 0) + count
            if start == minute:
                last[key] = last.get(key, 0) + count
        for key, count in hour.items():
            fields[f"flow_1h:{key}"] = count
            fields[f"flow_1m:{key}"] = last.get(key, 0)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(KEY_PREFIX + camera_id)
                pipe.hset(KEY_PREFIX + camera_id, mapping=fields)  # type: ignore[arg-type]  # invariant key type
                pipe.expire(KEY_PREFIX + camera_id, self._ttl_s)
                await pipe.execute()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            log.warning("Redis unavailable, online counts of %s not updated: %s", camera_id, exc)
