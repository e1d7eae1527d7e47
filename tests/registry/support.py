"""Helpers for the registry tests: the daemon under test, COCO names, small ONNX detectors,
upload messages, a TCP proxy that can simulate an outage."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import urllib.request
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from carmesh.v1 import registry_pb2
from carmesh_cli.names import PRESETS
from tests.helpers import SHARED, DaemonProcess
from tests.onnx_factory import write_yolov8_model, write_yolox_model, yolov8_raw

# Small enough that the too-large-upload test stays cheap, big enough for YOLOX-nano (3.7 MB).
MAX_IMPORT_BYTES = 8 * 1024 * 1024


@dataclass
class Gateway:
    daemon: DaemonProcess
    metrics_port: int
    cache_dir: Path
    mlflow_uri: str

    @property
    def address(self) -> str:
        return self.daemon.address

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise KeyError(name)


def gateway_args(mlflow_uri: str, cache_dir: Path, *extra: str) -> list[str]:
    return [
        "--mlflow-tracking-uri",
        mlflow_uri,
        "--cache-dir",
        str(cache_dir),
        "--poll-interval-s",
        "0.2",
        "--max-import-bytes",
        str(MAX_IMPORT_BYTES),
        *extra,
    ]


YOLOX_NANO = SHARED / "models" / "yolox_nano.onnx"

# YOLOX-nano's classes in output order (COCO-80); the file itself carries no names.
# The CLI's preset is the one users get; tests use the same list.
COCO80 = list(PRESETS["coco"])
assert len(COCO80) == 80 and COCO80[2] == "car"


def yolov8_file(
    path: Path, names: Sequence[str] | None = ("car", "truck"), hw: tuple[int, int] = (64, 96), score: float = 0.9
) -> Path:
    """A YOLOv8-layout model, dynamic batch; ``score`` varies the bytes between versions."""
    nc = len(names) if names is not None else 2
    raw = yolov8_raw([(20.0, 30.0, 10.0, 12.0)], [[score] + [0.0] * (nc - 1)], anchors=5)
    return write_yolov8_model(path, raw, input_hw=hw, names=list(names) if names is not None else None)


def yolox_file(path: Path, nc: int = 3, hw: tuple[int, int] = (64, 64)) -> Path:
    """A YOLOX-layout model: [1, A, 5+nc] with A the grid cells of strides 8/16/32."""
    anchors = sum((hw[0] // s) * (hw[1] // s) for s in (8, 16, 32))
    return write_yolox_model(path, np.zeros((1, anchors, 5 + nc), np.float32), input_hw=hw)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def import_messages(
    data: bytes,
    name: str,
    family: int = registry_pb2.MODEL_FAMILY_YOLOV8,
    chunk_bytes: int = 256 * 1024,
    **metadata: object,
) -> Iterator[registry_pb2.ImportModelRequest]:
    yield registry_pb2.ImportModelRequest(
        metadata=registry_pb2.ImportModelMetadata(name=name, family=family, **metadata)  # type: ignore[arg-type]
    )
    for start in range(0, len(data), chunk_bytes):
        yield registry_pb2.ImportModelRequest(chunk=data[start : start + chunk_bytes])


class TcpProxy:
    """A real TCP forwarder to ``target`` on a port of its own, run on a thread: :meth:`cut`
    refuses new connections and drops live ones (a network outage), :meth:`restore` ends it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.port = 0  # the first listen picks one; restore() listens on it again
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread.start()
        self.restore()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def restore(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._drop())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _drop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.close()
            return
        self._writers.update((client_writer, upstream_writer))
        await asyncio.gather(self._pump(client_reader, upstream_writer), self._pump(upstream_reader, client_writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


async def next_version(stream: grpc.aio.UnaryStreamCall) -> registry_pb2.ModelVersion | None:
    """The version of the stream's next message (None: alias unset); fails after a generous deadline."""
    message = await asyncio.wait_for(stream.read(), timeout=60)
    assert message is not grpc.aio.EOF, "the watch stream ended"
    return message.version if message.HasField("version") else None
