"""Online features lost to a Redis outage, rebuilt from PostgreSQL once Redis is back.

Online writes are best effort: while Redis is down the consumers store frames and detections
in PostgreSQL (the record) and carry on. Each failed write names its cameras here; the first
failure after Redis was up counts one outage. A task pings Redis while cameras are pending and,
once it answers, rebuilds each camera from PostgreSQL: its newest frame's features, and the
detection runs of the car-count window ending at its newest run. The rebuild goes through the
same Lua scripts as live updates, which never let an older value overwrite a newer one, so it
is safe alongside the consumers' own writes.

The pending cameras live in memory: a process killed during an outage forgets them, and those
cameras' online features come back with their next frame and detections instead (documented in
docs/reliability.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Iterable

import asyncpg

from feature_service.imaging import Features
from feature_service.metrics import FeatureMetrics
from feature_service.online import CAR_WINDOW_MS, ModelInfo, OnlineStore
from kit.backoff import Backoff, wait_event

log = logging.getLogger(__name__)

_LATEST_FRAME = """
SELECT frame_id, captured_at, brightness, contrast, sharpness, width, height
FROM frames WHERE camera_id = $1 ORDER BY captured_at DESC, frame_id DESC LIMIT 1
"""

_WINDOW_RUNS = """
WITH newest AS (SELECT max(detected_at) AS at FROM detection_runs WHERE camera_id = $1)
SELECT r.frame_id, r.detected_at, r.model_name, r.model_version, r.model_alias,
       (SELECT count(*) FROM predictions p
        WHERE p.frame_id = r.frame_id AND p.model_name = r.model_name AND p.model_version = r.model_version
          AND (cardinality($3::text[]) = 0 OR p.class_name = ANY($3::text[]))) AS cars
FROM detection_runs r, newest
WHERE r.camera_id = $1 AND r.detected_at >= newest.at - make_interval(secs => $2::float8 / 1000)
ORDER BY r.detected_at, r.frame_id
"""


class OnlineRepair:
    def __init__(
        self,
        *,
        online: OnlineStore,
        pool: asyncpg.Pool,
        metrics: FeatureMetrics,
        car_classes: Collection[str],
        backoff: Backoff,
    ) -> None:
        self._online = online
        self._pool = pool
        self._metrics = metrics
        self._car_classes = sorted(car_classes)
        self._backoff = backoff
        self._pending: set[str] = set()
        self._down = False
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        metrics.redis_up.set(1)

    @property
    def pending(self) -> frozenset[str]:
        return frozenset(self._pending)

    def failed(self, camera_ids: Iterable[str], exc: BaseException) -> None:
        """Online writes of ``camera_ids`` were lost to a Redis outage: rebuild them later."""
        before = len(self._pending)
        self._pending.update(camera_ids)
        self._metrics.online_repair_pending.set(len(self._pending))
        if not self._down:
            self._down = True
            self._metrics.redis_outages.inc()
            self._metrics.redis_up.set(0)
            log.warning("Redis is down (%s): online features of the cameras seen meanwhile are rebuilt after", exc)
        if len(self._pending) > before:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="online repair")

    async def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self._wake.wait()
            self._wake.clear()
            delays = self._backoff.delays()
            while self._pending and not self._stopping.is_set():
                try:
                    await self._repair_pending()
                except Exception as exc:  # Redis or PostgreSQL still away (or a bug): try again later
                    delay = next(delays)
                    log.info("online repair of %d cameras waits %.1fs: %s", len(self._pending), delay, exc)
                    await wait_event(self._stopping, delay)

    async def _repair_pending(self) -> None:
        await self._online.ping()
        if self._down:
            log.info("Redis answers again: rebuilding the online features of %d cameras", len(self._pending))
        for camera_id in sorted(self._pending):
            await self._rebuild(camera_id)
            self._pending.discard(camera_id)
            self._metrics.online_rebuilt_cameras.inc()
            self._metrics.online_repair_pending.set(len(self._pending))
        if not self._pending and self._down:
            self._down = False
            self._metrics.redis_up.set(1)
            log.info("online features rebuilt from PostgreSQL")

    async def _rebuild(self, camera_id: str) -> None:
        async with self._pool.acquire() as conn:
            frame = await conn.fetchrow(_LATEST_FRAME, camera_id)
            runs = await conn.fetch(_WINDOW_RUNS, camera_id, CAR_WINDOW_MS, self._car_classes)
        if frame is not None:
            features = Features(
                brightness=frame["brightness"],
                contrast=frame["contrast"],
                sharpness=frame["sharpness"],
                width=frame["width"],
                height=frame["height"],
            )
            await self._online.put_frame(camera_id, frame["frame_id"], frame["captured_at"], features)
        for run in runs:
            model = ModelInfo(run["model_name"], run["model_version"], run["model_alias"])
            await self._online.put_detections(camera_id, run["frame_id"], run["detected_at"], int(run["cars"]), model)
