"""The model from the registry: watch the alias, download changed versions into a cache keyed
by sha256, and hand them to the model manager. Reconnects with backoff; never gives up."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from carmesh.v1 import registry_pb2, registry_pb2_grpc
from detector.engine import ModelRef, ModelSpec
from detector.errors import DownloadError, ModelLoadError
from detector.models import ModelManager
from kit.backoff import Backoff, wait_event
from kit.hashing import sha256_file
from kit.mesh_tls import MeshTls, mesh_channel
from kit.server import channel_options

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


class ModelCache:
    """ONNX files named ``<sha256>.onnx``; written to a temporary name, then renamed, so a crash
    never leaves a partial file under a valid name."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path:
        return self.root / f"{sha256}.onnx"

    def lookup(self, sha256: str) -> Path | None:
        """The cached file when present and intact (re-hashed: blocking, run it in a thread)."""
        if not sha256:
            return None
        path = self.path_for(sha256)
        if not path.is_file():
            return None
        if sha256_file(path) != sha256:
            log.warning("cached model %s is corrupt; downloading it again", path)
            path.unlink(missing_ok=True)
            return None
        return path

    def _open_part(self) -> tuple[int, Path]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=self.root)
        return fd, Path(name)

    async def store(
        self, responses: AsyncIterator[registry_pb2.DownloadModelResponse], expected_version: str
    ) -> tuple[registry_pb2.ModelVersion, Path]:
        """Consumes a DownloadModel stream (version first, then chunks); verifies size and sha256."""
        iterator = responses.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            raise DownloadError("download stream was empty") from None
        if first.WhichOneof("payload") != "version":
            raise DownloadError("download stream did not start with the model version")
        version = first.version
        if expected_version and version.version != expected_version:
            raise DownloadError(f"asked for version {expected_version}, registry sent {version.version}")
        fd, tmp = await asyncio.to_thread(self._open_part)
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as fh:
                async for message in iterator:
                    if message.WhichOneof("payload") != "chunk":
                        raise DownloadError("download stream sent a second version message")
                    size += len(message.chunk)
                    if version.size_bytes and size > version.size_bytes:
                        raise DownloadError(f"download exceeds the announced {version.size_bytes} bytes")
                    digest.update(message.chunk)
                    await asyncio.to_thread(fh.write, message.chunk)
            if version.size_bytes and size != version.size_bytes:
                raise DownloadError(f"download ended at {size} of {version.size_bytes} bytes")
            actual = digest.hexdigest()
            if version.sha256 and actual != version.sha256.lower():
                raise DownloadError(f"sha256 mismatch: registry says {version.sha256}, received {actual}")
            if not version.sha256:
                log.warning(
                    "registry sent %s v%s without sha256; keyed by the received bytes", version.name, version.version
                )
            final = self.path_for(actual)
            await asyncio.to_thread(os.replace, tmp, final)
        except BaseException:
            # Also on cancellation, where awaiting a thread is not possible; one unlink is quick.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return version, final


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

    async def _load(self, stub: registry_pb2_grpc.RegistryServiceStub) -> None:
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
                await self._manager.activate(path, spec_of(version, self._opt.alias, self._opt.default_input_hw))
                delays.reset()
                self.status = f"serving version {version.version}"
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
