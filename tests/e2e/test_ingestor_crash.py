"""Issue 19, points 1 and 5 (the ingestor's row): the ingestor SIGKILLed while a folder source
runs, a client streams frames and another calls Detect through the gateway, then restarted.
Every frame a client had acknowledged and every file of the folder ends up in PostgreSQL (real
feature_service) exactly once: the source resumes from its saved position and re-published
frames keep their ids; every Detect call meanwhile gets the right answer (or UNAVAILABLE)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from carmesh.v1 import common_pb2, detector_pb2, detector_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from ingestor.state import STATE_FILE
from tests.feature_service.support import daemon_args, fetch, fresh_database
from tests.helpers import DaemonProcess, free_port
from tests.onnx_factory import write_yolov8_model, yolov8_raw
from tests.support import eventually_async

pytestmark = pytest.mark.e2e

KEY = "crash-key-0123456789abcdef"
BEARER = (("authorization", f"Bearer {KEY}"),)
FOLDER_FRAMES = 60
CLIENT_BATCHES, BATCH = 16, 5


def _images(count: int, seed: int) -> list[bytes]:
    """Distinct small JPEGs (noise: no two alike, so each file is one row)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        ok, buffer = cv2.imencode(".jpg", rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
        assert ok
        out.append(buffer.tobytes())
    return out


def _model(directory: Path) -> Path:
    """A constant-output detector: every image gets the same two boxes."""
    raw = yolov8_raw([(32, 32, 20, 20), (16, 16, 8, 8)], [[0.9, 0.05], [0.1, 0.6]])
    return write_yolov8_model(directory / "constant.onnx", raw, (64, 64), ["car", "truck"])


Answer = list[tuple[str, int, int, int, int]]


def _answer(reply: detector_pb2.DetectResponse) -> Answer:
    return sorted(
        (d.class_name, round(d.box.x1), round(d.box.y1), round(d.box.x2), round(d.box.y2)) for d in reply.detections
    )


@dataclass
class DetectLoad:
    """Detect calls at ~10/s through the gateway until stopped, each answer kept for checking."""

    image: bytes
    answers: list[Answer] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stub: detector_pb2_grpc.DetectorServiceStub) -> None:
        while not self.stop.is_set():
            try:
                reply = await stub.Detect(detector_pb2.DetectRequest(image=self.image), metadata=BEARER, timeout=10)
                self.answers.append(_answer(reply))
            except grpc.aio.AioRpcError as exc:
                self.failures[exc.code().name] += 1
            await asyncio.sleep(0.1)


@dataclass
class Mesh:
    gateway: str
    dsn: str
    ingestor: DaemonProcess
    state_dir: Path


@contextmanager
def _mesh(tmp_path: Path, kafka_bootstrap: str, postgres_dsn: str, redis_url: str) -> Iterator[Mesh]:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY} crash *\n")
    state_dir = tmp_path / "state"
    kafka = ["--kafka-bootstrap", kafka_bootstrap, "--no-kafka-idempotence"]
    # Small window and short acknowledgement wait: the kill finds frames in flight.
    ingest_args = [*kafka, "--allowed-roots", str(tmp_path / "data"), "--state-dir", str(state_dir)]
    ingest_args += ["--max-in-flight", "16", "--ack-wait-ms", "5000", "--state-flush-interval-ms", "100"]
    with (
        contextmanager(fresh_database)(postgres_dsn, "ingestcrash") as db,
        DaemonProcess(
            "feature_service",
            daemon_args(dsn=db.dsn, redis_url=redis_url, kafka_bootstrap=kafka_bootstrap, blob_dir=tmp_path / "blobs"),
        ),
        DaemonProcess("ingestor", ingest_args) as ingestor,
        DaemonProcess("detector", ["--model-path", str(_model(tmp_path)), "--max-wait-ms", "1"]) as detector,
        DaemonProcess(
            "gateway",
            [
                *("--api-keys-file", str(keys), "--registry-addr", f"127.0.0.1:{free_port()}"),
                *("--detector-addrs", detector.address, "--ingestor-addr", ingestor.address),
                *("--feature-addr", f"127.0.0.1:{free_port()}", "--health-check-interval-s", "0.2"),
            ],
        ) as gateway,
    ):
        yield Mesh(gateway.address, db.dsn, ingestor, state_dir)


@dataclass
class Client:
    """Sends batches of frames and re-sends a batch until the call returns OK: only then are its
    frames acknowledged (the reply's promise that the broker has them)."""

    camera: str
    images: list[bytes]
    acknowledged: set[str] = field(default_factory=set)
    failures: Counter[str] = field(default_factory=Counter)
    sending: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stub: ingest_pb2_grpc.IngestServiceStub) -> None:
        for b in range(CLIENT_BATCHES):
            names = [f"{self.camera}-{b * BATCH + i}" for i in range(BATCH)]

            async def batch(names: list[str] = names) -> AsyncIterator[ingest_pb2.IngestFramesRequest]:
                for name in names:
                    self.sending.set()
                    image = self.images[int(name.rsplit("-", 1)[1])]
                    frame = common_pb2.Frame(frame_id=name, camera_id=self.camera, image=image, source=name)
                    yield ingest_pb2.IngestFramesRequest(frame=frame)
                    await asyncio.sleep(0.02)  # a camera's pace: the kill lands inside a stream

            while True:
                try:
                    reply = await stub.IngestFrames(batch(), metadata=BEARER, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    self.failures[exc.code().name] += 1
                    await asyncio.sleep(0.2)
                    continue
                assert (reply.accepted, reply.acknowledged, reply.buffered) == (BATCH, BATCH, 0), reply
                self.acknowledged.update(names)
                break


async def _rows(dsn: str, camera: str) -> list[str]:
    return [r["source"] for r in await fetch(dsn, "select source from frames where camera_id = $1", camera)]


def test_sigkill_mid_source_and_mid_client_stream_loses_and_duplicates_nothing(
    tmp_path: Path, kafka_bootstrap: str, postgres_dsn: str, redis_url: str
) -> None:
    folder = tmp_path / "data" / "cam"
    folder.mkdir(parents=True)
    files = [folder / f"{i:04d}.jpg" for i in range(FOLDER_FRAMES)]
    for path, image in zip(files, _images(FOLDER_FRAMES, 1), strict=True):
        path.write_bytes(image)
    with _mesh(tmp_path, kafka_bootstrap, postgres_dsn, redis_url) as mesh:
        asyncio.run(_kill_and_restart(mesh, folder, files))


async def _kill_and_restart(mesh: Mesh, folder: Path, files: list[Path]) -> None:
    run = uuid.uuid4().hex[:8]
    folder_camera, client = f"crash-folder-{run}", Client(f"crash-client-{run}", _images(CLIENT_BATCHES * BATCH, 2))
    async with grpc.aio.insecure_channel(mesh.gateway) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        spec = ingest_pb2.SourceSpec(
            kind=ingest_pb2.SOURCE_KIND_IMAGE_FOLDER, uri=str(folder), camera_id=folder_camera, max_fps=15
        )
        started = await stub.StartSource(ingest_pb2.StartSourceRequest(spec=spec), metadata=BEARER, timeout=10)
        source_id = started.source.source_id
        sending = asyncio.create_task(client.run(stub))
        load = DetectLoad(client.images[0])
        detecting = asyncio.create_task(load.run(detector_pb2_grpc.DetectorServiceStub(channel)))

        async def midway() -> bool:
            stored = len(await _rows(mesh.dsn, folder_camera))
            return stored >= 15 and len(client.acknowledged) >= 2 * BATCH

        await eventually_async(midway, what="a part of both flows stored", timeout_s=90)
        assert (mesh.state_dir / STATE_FILE).exists()
        assert mesh.ingestor.proc is not None
        mesh.ingestor.proc.kill()  # SIGKILL: no drain, frames in the window are lost from memory
        mesh.ingestor.proc.wait()
        at_kill = len(await _rows(mesh.dsn, folder_camera))
        assert at_kill < FOLDER_FRAMES, "the kill should land while the source still runs"
        assert not sending.done(), "the kill should land while the client still streams"
        await asyncio.to_thread(mesh.ingestor.start)  # same port: the gateway reconnects

        async def resumed() -> bool:
            try:
                listed = await stub.ListSources(ingest_pb2.ListSourcesRequest(), metadata=BEARER, timeout=10)
            except grpc.aio.AioRpcError as exc:  # until the gateway's health check sees it back
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                return False
            # Listed at all means resumed (a fresh process knows no source); it may have finished already.
            resumed = {s.source_id: s.state for s in listed.sources}
            ok = (ingest_pb2.SOURCE_STATE_RUNNING, ingest_pb2.SOURCE_STATE_FINISHED)
            assert resumed.get(source_id) in ok, f"the source was not resumed: {listed}"
            return True

        await eventually_async(resumed, what="the gateway to reach the restarted ingestor", timeout_s=30)
        await asyncio.wait_for(sending, timeout=120)
        assert client.failures, "no client call failed: the kill missed the stream"

        async def all_stored() -> bool:
            folder_rows = await _rows(mesh.dsn, folder_camera)
            client_rows = await _rows(mesh.dsn, client.camera)
            return len(set(folder_rows)) == FOLDER_FRAMES and client.acknowledged <= set(client_rows)

        await eventually_async(all_stored, what="every frame stored after the restart", timeout_s=120)

        async def finished() -> bool:
            listed = await stub.ListSources(ingest_pb2.ListSourcesRequest(), metadata=BEARER, timeout=10)
            states = {s.source_id: s.state for s in listed.sources}
            return states.get(source_id) == ingest_pb2.SOURCE_STATE_FINISHED

        await eventually_async(finished, what=f"source {source_id} to finish", timeout_s=60)
        load.stop.set()
        await detecting

    # Detect never went through the ingestor: answered all along, each answer the model's.
    assert len(load.answers) >= 20 and set(load.failures) <= {"UNAVAILABLE"}, (len(load.answers), load.failures)
    assert all(a == load.answers[0] for a in load.answers), "a Detect answer changed"
    assert sorted(name for name, *_ in load.answers[0]) == ["car", "truck"], load.answers[0]

    folder_rows = await _rows(mesh.dsn, folder_camera)
    client_rows = await _rows(mesh.dsn, client.camera)
    assert Counter(folder_rows) == Counter({str(p): 1 for p in files}), "lost or duplicated folder frames"
    duplicated = [name for name, n in Counter(client_rows).items() if n > 1]
    assert not duplicated, f"client frames stored twice: {duplicated}"
    assert client.acknowledged == {f"{client.camera}-{i}" for i in range(CLIENT_BATCHES * BATCH)}
    # A finished source leaves the state file (within a flush interval): a restart does not run it again.
    await eventually_async(
        lambda: source_id not in (mesh.state_dir / STATE_FILE).read_text(), what="the state file to forget it"
    )
