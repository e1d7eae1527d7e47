"""The model from the registry: watch the alias, download changed versions into a cache keyed
by sha256, and hand them to the model manager. Reconnects with backoff; never gives up.

At start-up the last-known-good model (the last registry version that loaded, recorded in the
cache) is served at once, before the registry answers: a detector restarted while the registry
or MLflow is down serves what it served before, and switches when the watch names another
version."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from carmesh.v1 import registry_pb2, registry_pb2_grpc
from detector.engine import ModelRef, ModelSpec
from detector.errors import DownloadError, ModelLoadError
from detector.model_cache import ModelCache
from detector.models import ModelManager
from kit.backoff import Backoff, wait_event
from kit.mesh_tls import MeshTls, mesh_channel
from kit.server import channel_options

__all__ = ["FAMILY_TO_PROTO", "ModelCache", "RegistryWatcher", "WatchOptions", "spec_of"]

log = logging.getLogger(__name__)

# A watch is idle for hours; keepalive notices a silently dead connection. Five minutes is the
# most frequent ping a default gRPC server accepts without a GOAWAY (too_many_pings).
_KEEPALIVE = [("grpc.keepalive_time_ms", 300_000), ("grpc.keepalive_timeout_ms", 20_000)]
_FAMILIES = {registry_pb2.MODEL_FAMILY_YOLOV8: "yolov8", registry_pb2.MODEL_FAMILY_YOLOX: "yolox"}
# The engine's family name -> the registry's enum, for GetModelInfo.
FAMILY_TO_PROTO = {name: value for value, name in _FAMILIES.items()}


def spec_of(version: registry_pb2.ModelVersion, alias: str, default_input_hw: tuple[int, int]) -> ModelSpec:
    # The model I/O contract makes YOLOv8 the layout of a version registered without a family.
    family = _FAMILIES.get(version.family, "yolov8")
    input_hw = (
        (version.input_height, version.input_width)
        if version.input_height and version.input_width
        else default_input_hw
    )
    return ModelSpec(
        ref=ModelRef(version.name, version.version, alias),
        family=family,
        class_names=tuple(version.class_names),
        input_hw=input_hw,
        sha256=version.sha256,
    )


@dataclass(frozen=True)
class WatchOptions:
    addr: str
    name: str
    alias: str
    retry_initial_s: float = 0.5
    retry_max_s: float = 15.0
    chunk_bytes: int = 0
    max_message_bytes: int = 64 * 1024 * 1024
    default_input_hw: tuple[int, int] = (640, 640)
    # The detector's mesh identity for its calls to the registry (None: plaintext, --mesh-plaintext).
    tls: MeshTls | None = None


class RegistryWatcher:
    """Two tasks: the watch keeps the wanted version current; the loader fetches and activates it.
    A newer update supersedes one still downloading, so the newest promotion wins."""

    def __init__(self, options: WatchOptions, cache: ModelCache, manager: ModelManager) -> None:
        self._opt = options
        self._cache = cache
        self._manager = manager
        self._wanted: registry_pb2.ModelVersion | None = None
        self._changed = asyncio.Event()
        self._failed: set[tuple[str, str]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._channel: grpc.aio.Channel | None = None
        # Jitter keeps a fleet of detectors from reconnecting in lockstep after a registry restart.
        self._backoff = Backoff(options.retry_initial_s, options.retry_max_s, jitter=0.2)
        self.status = f"connecting to the registry at {options.addr}"

    def waiting_for(self) -> str:
        """Why nothing is served yet, for the UNAVAILABLE message."""
        return f"{self._opt.name}@{self._opt.alias} from the registry at {self._opt.addr}: {self.status}"

    def start(self) -> None:
        self._channel = mesh_channel(
            self._opt.addr, self._opt.tls, [*channel_options(self._opt.max_message_bytes), *_KEEPALIVE]
        )
        stub = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._tasks = [
            asyncio.create_task(self._watch(stub), name="registry watch"),
            asyncio.create_task(self._load(stub), name="registry loader"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close(None)

    async def _watch(self, stub: registry_pb2_grpc.RegistryServiceStub) -> None:
        target = f"{self._opt.name}@{self._opt.alias}"
        delays = self._backoff.delays()
        while True:
            try:
                call = stub.WatchAlias(registry_pb2.WatchAliasRequest(name=self._opt.name, alias=self._opt.alias))
                async for update in call:
                    delays.reset()
                    self._on_update(update)
                self.status = "the registry ended the watch; reconnecting"
            except grpc.aio.AioRpcError as exc:
                delay = next(delays)
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    self.status = f"{target} does not exist in the registry ({exc.details()})"
                    log.error(
                        "%s not found in the registry at %s: %s; retrying in %.1fs (register the model "
                        "and set the alias)",
                        target,
                        self._opt.addr,
                        exc.details(),
                        delay,
                    )
                else:
                    self.status = f"registry unreachable ({exc.code().name}: {exc.details()})"
                    log.warning(
                        "watching %s at %s failed (%s: %s); retrying in %.1fs",
                        target,
                        self._opt.addr,
                        exc.code().name,
                        exc.details(),
                        delay,
                    )
                await asyncio.sleep(delay)
                continue
            except Exception:
                # A bug here must not end hot reload for the life of the process.
                log.exception("unexpected error watching %s; retrying", target)
                await asyncio.sleep(next(delays))
                continue
            await asyncio.sleep(delays.first())

    def _on_update(self, update: registry_pb2.WatchAliasResponse) -> None:
        target = f"{self._opt.name}@{self._opt.alias}"
        if not update.HasField("version"):
            self.status = f"alias {target} is not set; waiting for a version to be promoted"
            log.error(
                "alias %s is not set in the registry at %s; %s",
                target,
                self._opt.addr,
                "keeping the current model" if self._manager.current else "nothing to serve until it is",
            )
            return
        version = update.version
        current = self._manager.current
        if (
            current is not None
            and current.spec.ref.version == version.version
            and current.spec.ref.name == version.name
        ):
            self.status = f"serving version {version.version}"  # e.g. the last-known-good one, now confirmed
            return
        log.info("%s points at version %s (sha256 %s)", target, version.version, version.sha256[:12] or "?")
        self._wanted = version
        self._changed.set()

    async def _fetch(
        self, stub: registry_pb2_grpc.RegistryServiceStub, wanted: registry_pb2.ModelVersion
    ) -> tuple[registry_pb2.ModelVersion, Path]:
        cached = await asyncio.to_thread(self._cache.lookup, wanted.sha256)
        if cached is not None:
            return wanted, cached
        self.status = f"downloading version {wanted.version}"
        request = registry_pb2.DownloadModelRequest(
            name=wanted.name or self._opt.name, version=wanted.version, chunk_size_bytes=self._opt.chunk_bytes
        )
        call = stub.DownloadModel(request)
        try:
            version, path = await self._cache.store(call, wanted.version)
        finally:
            call.cancel()
        # The download's version message is authoritative; fill what it leaves blank from the watch.
        if not version.class_names:
            version.class_names.extend(wanted.class_names)
        if not version.family:
            version.family = wanted.family
        if not (version.input_width and version.input_height):
            version.input_width, version.input_height = wanted.input_width, wanted.input_height
        if not version.sha256:
            version.sha256 = path.stem
        return version, path

    async def _restore(self) -> None:
        """Serves the last-known-good model unless the registry already named a version."""
        try:
            found = await asyncio.to_thread(self._cache.last_good)
        except OSError as exc:
            log.warning("cannot read the last-known-good model: %s", exc)
            return
        if found is None or self._manager.current is not None or self._wanted is not None:
            return
        path, spec = found
        if (spec.ref.name, spec.ref.alias) != (self._opt.name, self._opt.alias):
            log.info(
                "the last-known-good model is %s@%s, not %s@%s: not serving it",
                spec.ref.name,
                spec.ref.alias,
                self._opt.name,
                self._opt.alias,
            )
            return
        try:
            await self._manager.activate(path, spec)
        except ModelLoadError as exc:
            log.warning("the last-known-good model %s v%s does not load: %s", spec.ref.name, spec.ref.version, exc)
            return
        self.status = f"serving the last-known-good version {spec.ref.version} until the registry answers"
        await self._keep(spec)  # trims a cache left over its bound (e.g. the bound was lowered)
        log.info(
            "serving the last-known-good %s v%s (sha256 %s) from %s until the registry confirms or replaces it",
            spec.ref.name,
            spec.ref.version,
            spec.sha256[:12],
            path,
        )

    async def _keep(self, spec: ModelSpec) -> None:
        """Records the served model as last known good and trims the cache; a disk error only warns."""
        try:
            await asyncio.to_thread(self._cache.remember, spec)
            await asyncio.to_thread(self._cache.trim, (spec.sha256,))
        except OSError as exc:
            log.warning("cannot record %s v%s as last known good: %s", spec.ref.name, spec.ref.version, exc)

    async def _load(self, stub: registry_pb2_grpc.RegistryServiceStub) -> None:
        await self._restore()
        delays = self._backoff.delays()
        while True:
            await self._changed.wait()
            self._changed.clear()
            wanted = self._wanted
            if wanted is None:
                continue
            key = (wanted.version, wanted.sha256)
            current = self._manager.current
            if key in self._failed or (current is not None and current.spec.ref.version == wanted.version):
                continue
            try:
                version, path = await self._fetch(stub, wanted)
                spec = spec_of(version, self._opt.alias, self._opt.default_input_hw)
                await self._manager.activate(path, spec)
                delays.reset()
                self.status = f"serving version {version.version}"
                await self._keep(spec)
            except ModelLoadError as exc:
                # The bytes matched the registry's sha256, so retrying would fail the same way.
                self._failed.add(key)
                self.status = f"version {wanted.version} cannot be served: {exc}"
                log.error(
                    "not serving %s v%s: %s%s",
                    wanted.name,
                    wanted.version,
                    exc,
                    "; keeping the current model" if self._manager.current else "",
                )
            except Exception as exc:  # registry errors, bad downloads, disk errors, and bugs: retry all
                delay = next(delays)
                if isinstance(exc, grpc.aio.AioRpcError):
                    detail = f"{exc.code().name}: {exc.details()}"
                elif isinstance(exc, (DownloadError, OSError)):
                    detail = str(exc)
                else:
                    log.exception("unexpected error loading %s v%s", wanted.name, wanted.version)
                    detail = f"{type(exc).__name__}: {exc}"
                self.status = f"download of version {wanted.version} failed ({detail})"
                log.warning(
                    "download of %s v%s failed (%s); retrying in %.1fs", wanted.name, wanted.version, detail, delay
                )
                await wait_event(self._changed, delay)  # a newer update cuts the wait short
                self._changed.set()
