"""The load of ``make soak`` (bench/soak.py): Detect clients on a fixed schedule, a client
streaming frames, the alias flips, the /proc sampler, and the count of stored frames."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import cv2
import grpc
import numpy as np

from bench.soak_report import Call, ProcSample, read_proc, stack_pids
from carmesh.v1 import (
    common_pb2,
    detector_pb2,
    detector_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from carmesh_cli.names import COCO_NAMES
from kit.grpc_compat import keep_server_status_on_failed_writes

SHARED = Path(__file__).resolve().parents[2] / "shared"
# The detector of `make up` serves car-detector@champion (detector/config.py's defaults).
MODEL_NAME, ALIAS = "car-detector", "champion"
FOLDER_FILES = 50
# Generous deadlines: the soak counts failures, latency is reported apart. On a loaded 2-core
# machine a Detect p99 reaches seconds and a SetAlias (MLflow behind the registry) tens of seconds.
DETECT_TIMEOUT_S = 30.0
CONTROL_TIMEOUT_S = 120.0


@dataclass
class Recorder:
    t0: float
    calls: list[Call] = field(default_factory=list)
    promotions: list[float] = field(default_factory=list)
    samples: dict[str, list[ProcSample]] = field(default_factory=dict)
    died: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def record(self, kind: str, started: float, code: str) -> None:
        self.calls.append(Call(kind, started, (self.now() - started) * 1000.0, code))


def say(text: str) -> None:
    print(f"soak: {text}", file=sys.stderr, flush=True)


class SoakError(RuntimeError):
    """The soak could not run (no model file, the detector never served); not a broken threshold."""


def _jpeg(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise SoakError("JPEG encoding failed")
    return bytes(data.tobytes())


def noise_jpeg(seed: int, shape: tuple[int, int] = (96, 128)) -> bytes:
    """A small JPEG unique to ``seed`` (the ingestor derives frame ids from the bytes)."""
    return _jpeg(np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8))


def street_images() -> list[Path]:
    return sorted((SHARED / "data" / "apollo-cars" / "val" / "images").glob("*.jpg"))


def prepare_folder(folder: Path) -> None:
    """FOLDER_FILES frames for the folder source: apollo-cars street images scaled to 640 px wide
    (Tansu keeps every record in memory: full-size frames at 10 fps would grow it ~2 MB/s), or noise."""
    folder.mkdir(parents=True, exist_ok=True)
    streets = street_images()
    for i in range(FOLDER_FILES):
        if streets:
            image = cv2.imread(str(streets[i % len(streets)]))
            if image is None:
                raise SoakError(f"cannot read {streets[i % len(streets)]}")
            scale = 640 / image.shape[1]
            image = cv2.resize(image, (640, round(image.shape[0] * scale)))
            image[0, 0] = (i % 256, i // 256, 0)  # distinct bytes even when the folder repeats an image
            data = _jpeg(image)
        else:
            data = noise_jpeg(10_000 + i, (360, 640))
        (folder / f"{i:04d}.jpg").write_bytes(data)


async def register_versions(
    registry: registry_pb2_grpc.RegistryServiceStub,
    meta: tuple[tuple[str, str], ...],
    model: bytes,
    file_name: str,
    run: str,
) -> tuple[str, list[str]]:
    """(the champion before the soak or "", two new versions of MODEL_NAME); the first is champion."""
    previous = ""
    try:
        got = await registry.GetModelVersion(
            registry_pb2.GetModelVersionRequest(name=MODEL_NAME, alias=ALIAS), metadata=meta, timeout=CONTROL_TIMEOUT_S
        )
        previous = got.version.version
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
    versions = []
    for n, alias in enumerate((ALIAS, "")):
        metadata = registry_pb2.ImportModelMetadata(
            name=MODEL_NAME,
            family=registry_pb2.MODEL_FAMILY_YOLOX,
            class_names=list(COCO_NAMES),
            description=f"soak {run} version {'AB'[n]}",
            alias=alias,
            file_name=file_name,
        )

        async def chunks(
            metadata: registry_pb2.ImportModelMetadata = metadata,
        ) -> AsyncIterator[registry_pb2.ImportModelRequest]:
            yield registry_pb2.ImportModelRequest(metadata=metadata)
            for start in range(0, len(model), 1 << 20):
                yield registry_pb2.ImportModelRequest(chunk=model[start : start + (1 << 20)])

        reply = await registry.ImportModel(chunks(), metadata=meta, timeout=3 * CONTROL_TIMEOUT_S)
        versions.append(reply.version.version)
    return previous, versions


async def wait_detector(
    detect: detector_pb2_grpc.DetectorServiceStub, meta: tuple[tuple[str, str], ...], image: bytes, version: str
) -> None:
    deadline = time.monotonic() + 180
    while True:
        try:
            reply = await detect.Detect(
                detector_pb2.DetectRequest(image=image), metadata=meta, timeout=DETECT_TIMEOUT_S
            )
            if reply.model.version == version:
                return
        except grpc.aio.AioRpcError as exc:
            if time.monotonic() > deadline:
                raise SoakError(f"the detector did not serve version {version}: {exc.code().name}") from exc
        if time.monotonic() > deadline:
            raise SoakError(f"the detector did not serve version {version} within 180 s")
        await asyncio.sleep(0.5)  # polling the hot reload


async def detect_client(
    stub: detector_pb2_grpc.DetectorServiceStub,
    meta: tuple[tuple[str, str], ...],
    image: bytes,
    period_s: float,
    phase_s: float,
    rec: Recorder,
    stop: asyncio.Event,
) -> None:
    """One call every ``period_s`` on a fixed schedule (a late call does not push the next one back)."""
    k = 0
    while not stop.is_set():
        due = phase_s + k * period_s
        k += 1
        if due > rec.now():
            await asyncio.sleep(due - rec.now())
        started = rec.now()
        try:
            await stub.Detect(detector_pb2.DetectRequest(image=image), metadata=meta, timeout=DETECT_TIMEOUT_S)
            rec.record("detect", started, "OK")
        except grpc.aio.AioRpcError as exc:
            rec.record("detect", started, exc.code().name)


@dataclass
class StreamClient:
    camera: str
    fps: float
    batch: int
    acknowledged: set[int] = field(default_factory=set)

    async def run(
        self,
        stub: ingest_pb2_grpc.IngestServiceStub,
        meta: tuple[tuple[str, str], ...],
        rec: Recorder,
        stop: asyncio.Event,
    ) -> None:
        """Batches of frames with seq 1, 2, ...; a failed batch is sent again until OK, also after stop."""
        # A failed write would read INTERNAL instead of the server's status (grpc/grpc#36066), as the
        # gateway's own client streams would without it.
        keep_server_status_on_failed_writes()
        seq = 1
        while not stop.is_set():
            seqs = list(range(seq, seq + self.batch))
            images = {s: noise_jpeg(s) for s in seqs}

            async def frames(
                seqs: list[int] = seqs, images: dict[int, bytes] = images
            ) -> AsyncIterator[ingest_pb2.IngestFramesRequest]:
                for s in seqs:
                    frame = common_pb2.Frame(camera_id=self.camera, seq=s, image=images[s], source="soak")
                    yield ingest_pb2.IngestFramesRequest(frame=frame)
                    await asyncio.sleep(1.0 / self.fps)  # a camera's pace

            for _attempt in range(20):
                started = rec.now()
                try:
                    reply = await stub.IngestFrames(frames(), metadata=meta, timeout=60)
                except grpc.aio.AioRpcError as exc:
                    rec.record("ingest", started, exc.code().name)
                    await asyncio.sleep(0.5)  # a client's back-off before re-sending
                    continue
                rec.record("ingest", started, "OK" if reply.acknowledged == len(seqs) else "INCOMPLETE")
                if reply.acknowledged == len(seqs):
                    self.acknowledged.update(seqs)
                    break
            seq += self.batch


async def promoter(
    registry: registry_pb2_grpc.RegistryServiceStub,
    meta: tuple[tuple[str, str], ...],
    versions: list[str],
    every_s: float,
    rec: Recorder,
    stop: asyncio.Event,
) -> None:
    """Flips at half periods (30 s, 90 s, ... for 60 s): a warm-up and a run of whole periods then
    start and end at the same point of the flip cycle (the detector holds two models mid-swap)."""
    k = 1
    while not stop.is_set():
        # wait_for with a timeout of 0 (a flip behind schedule) raises before looking at the event.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(0.01, (k - 0.5) * every_s - rec.now()))
        if stop.is_set():
            return
        started = rec.now()
        rec.promotions.append(started)
        request = registry_pb2.SetAliasRequest(name=MODEL_NAME, alias=ALIAS, version=versions[k % 2])
        try:
            await registry.SetAlias(request, metadata=meta, timeout=CONTROL_TIMEOUT_S)
            rec.record("promote", started, "OK")
        except grpc.aio.AioRpcError as exc:
            rec.record("promote", started, exc.code().name)
        k += 1


async def sampler(run_dir: Path, every_s: float, rec: Recorder, stop: asyncio.Event) -> None:
    first = stack_pids(run_dir)
    while not stop.is_set():
        now = stack_pids(run_dir)
        for name, pid in first.items():
            got = read_proc(pid)
            if now.get(name) != pid or got is None:
                note = f"{name} (pid {pid}) gone or replaced at {rec.now():.0f} s"
                if note.split(" gone")[0] not in {d.split(" gone")[0] for d in rec.died}:
                    rec.died.append(note)
                continue
            rec.samples.setdefault(name, []).append(ProcSample(rec.now(), pid, got[0], got[1]))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)


async def stored(dsn: str, camera: str) -> tuple[int, set[int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("select seq from frames where camera_id = $1", camera)
    finally:
        await conn.close()
    return len(rows), {int(r["seq"]) for r in rows}


async def drain(dsn: str, expected: dict[str, int], timeout_s: float) -> dict[str, tuple[int, set[int]]]:
    """Rows per camera once every camera has at least its expected distinct frames, or at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = {camera: await stored(dsn, camera) for camera in expected}
        if all(len(got[c][1]) >= n for c, n in expected.items()) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(1.0)  # polling the feature_service's writes
