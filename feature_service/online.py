"""The online store (Redis): latest features and rolling car counts per camera, with TTLs.

Keys per camera ``<id>``: hash ``carmesh:camera:<id>`` (what GetOnlineFeatures returns), sorted
set ``...:dets`` (frame_id scored by detection time, the rolling window) and hash ``...:cars``
(frame_id -> car count). Every key is built by :func:`camera_keys`, which takes only names of
the kit's name syntax: no ``:`` in a camera id, so ``cam1:cars`` can never be camera ``cam1``'s
car-count hash (ids are checked where frames and requests come in; this is the last guard).
Updates are Lua scripts: atomic, and a replayed (older) record never overwrites newer values,
so Kafka replays leave the store as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis

from feature_service.db import unavailable_as
from feature_service.errors import CameraNotFound
from feature_service.imaging import Features
from kit.names import name_problem

# The proto's car_count_1m: the mean over the minute ending at the camera's newest detection.
CAR_WINDOW_MS = 60_000

_FEATURES_LUA = """
local cur = redis.call('HGET', KEYS[1], 'last_seen_at_ms')
if cur and tonumber(cur) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'last_seen_at_ms', ARGV[2], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

_DETECTIONS_LUA = """
local ttl, at, frame, cars, window = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
redis.call('ZADD', KEYS[2], at, frame)
redis.call('HSET', KEYS[3], frame, cars)
local newest = tonumber(redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2])
local cutoff = '(' .. string.format('%.0f', newest - window)
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
if #old > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
  for i = 1, #old, 1000 do redis.call('HDEL', KEYS[3], unpack(old, i, math.min(i + 999, #old))) end
end
local counts = redis.call('HVALS', KEYS[3])
local sum = 0
for _, c in ipairs(counts) do sum = sum + tonumber(c) end
local mean = 0
if #counts > 0 then mean = sum / #counts end
redis.call('HSET', KEYS[1], 'car_count_1m', string.format('%.17g', mean))
local cur = redis.call('HGET', KEYS[1], 'last_detected_at_ms')
if (not cur) or tonumber(cur) <= at then
  redis.call('HSET', KEYS[1], 'last_detected_at_ms', ARGV[2], 'last_car_count', cars, unpack(ARGV, 6))
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
return 1
"""


KEY_PREFIX = "carmesh:camera"


@dataclass(frozen=True)
class CameraKeys:
    features: str  # hash: latest features, car counts, model
    dets: str  # sorted set: frame_id by detection time (the rolling window)
    cars: str  # hash: frame_id -> car count


def camera_keys(camera_id: str) -> CameraKeys:
    """The one place Redis keys are made; raises ValueError for an id outside the name syntax."""
    problem = name_problem("camera id", camera_id)
    if problem is not None:
        raise ValueError(problem)
    key = f"{KEY_PREFIX}:{camera_id}"
    return CameraKeys(features=key, dets=f"{key}:dets", cars=f"{key}:cars")


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    alias: str


@dataclass(frozen=True)
class CameraFeatures:
    camera_id: str
    last_frame_id: str
    last_seen_at: datetime | None
    features: Features | None
    last_car_count: int
    car_count_1m: float
    last_model: ModelInfo | None


class OnlineStore:
    def __init__(self, client: aioredis.Redis, ttl_s: int) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._features = client.register_script(_FEATURES_LUA)
        self._detections = client.register_script(_DETECTIONS_LUA)

    @classmethod
    def from_url(cls, url: str, ttl_s: int, password: str | None = None) -> OnlineStore:
        # A password in the URL wins over the keyword (redis-py's rule); the keyword is the file's.
        client = aioredis.Redis.from_url(
            url,
            password=password,
            decode_responses=True,
            socket_timeout=5.0,
            socket_connect_timeout=5.0,
            health_check_interval=30,
        )
        return cls(client, ttl_s)

    async def close(self) -> None:
        await self._client.aclose()

    async def ping(self) -> None:
        """Raises when Redis does not answer (an outage: see ``db.is_transient``)."""
        await self._client.ping()  # type: ignore[misc]

    async def put_frame(self, camera_id: str, frame_id: str, captured_at: datetime, features: Features) -> None:
        fields = {
            "last_frame_id": frame_id,
            "brightness": repr(features.brightness),
            "contrast": repr(features.contrast),
            "sharpness": repr(features.sharpness),
            "width": str(features.width),
            "height": str(features.height),
        }
        args: list[str | int] = [self._ttl_s, _ms(captured_at)]
        for name, value in fields.items():
            args += [name, value]
        await self._features(keys=[camera_keys(camera_id).features], args=args)

    async def put_detections(
        self, camera_id: str, frame_id: str, detected_at: datetime, car_count: int, model: ModelInfo
    ) -> None:
        keys = camera_keys(camera_id)
        args: list[str | int] = [self._ttl_s, _ms(detected_at), frame_id, car_count, CAR_WINDOW_MS]
        args += ["model_name", model.name, "model_version", model.version, "model_alias", model.alias]
        await self._detections(keys=[keys.features, keys.dets, keys.cars], args=args)

    async def get(self, camera_id: str) -> CameraFeatures:
        async with unavailable_as("Redis"):
            raw = await self._client.hgetall(camera_keys(camera_id).features)  # type: ignore[misc]
        fields = {str(k): str(v) for k, v in raw.items()}  # decode_responses: already str
        if not fields:
            raise CameraNotFound(
                f"no online features for camera {camera_id!r}: it sent no frame or detection "
                f"in the last {self._ttl_s}s (features_ttl_s), or it does not exist"
            )
        seen_ms = fields.get("last_seen_at_ms")
        features = None
        if "brightness" in fields:
            features = Features(
                brightness=float(fields["brightness"]),
                contrast=float(fields["contrast"]),
                sharpness=float(fields["sharpness"]),
                width=int(fields["width"]),
                height=int(fields["height"]),
            )
        model = None
        if fields.get("model_name"):
            model = ModelInfo(fields["model_name"], fields.get("model_version", ""), fields.get("model_alias", ""))
        return CameraFeatures(
            camera_id=camera_id,
            last_frame_id=fields.get("last_frame_id", ""),
            last_seen_at=datetime.fromtimestamp(int(seen_ms) / 1000, tz=UTC) if seen_ms else None,
            features=features,
            last_car_count=int(fields.get("last_car_count", 0)),
            car_count_1m=float(fields.get("car_count_1m", 0.0)),
            last_model=model,
        )
