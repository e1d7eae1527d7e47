"""``make soak DURATION=10m``: a mixed load for DURATION against a ``make up`` stack (started, and
stopped after, when it is not running), watching every process of the stack (issue 19, point 6).

Through the gateway (TLS, the stack's API key): Detect at a fixed rate from several clients, a
looping folder source at 10 fps, a client streaming frames (each batch re-sent until OK, as a
retrying client must), and the champion alias flipped between two registered versions every
minute. /proc is sampled every few seconds for RSS and open fds of every pid in RUN_DIR/pids.
The report (bench/soak_report.py) goes to stdout as markdown and to a JSON file; the exit status
is 1 when a threshold is broken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import cv2
import grpc
import numpy as np

from bench.soak_report import (
    Call,
    Frames,
    ProcSample,
    SoakReport,
    Thresholds,
    growth,
    markdown,
    read_proc,
    stack_pids,
    violations,
)
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
from devstack import __main__ as stack
from devstack import services
from devstack.procs import Process

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# The detector of `make up` serves car-detector@champion (detector/config.py's defaults).
MODEL_NAME, ALIAS = "car-detector", "champion"
FOLDER_FILES = 50
# Generous deadlines: the soak counts failures, latency is reported apart. On a loaded 2-core
# machine a Detect p99 reaches seconds and a SetAlias (MLflow behind the registry) tens of seconds.
DETECT_TIMEOUT_S = 30.0
CONTROL_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SoakOptions:
    duration_s: float
    warmup_s: float
    detect_rps: float = 4.0
    # Each client waits for its answer: enough of them that the rate holds up to a 3 s latency.
    detect_clients: int = 12
    folder_fps: float = 10.0
    stream_fps: float = 5.0
    stream_batch: int = 10
    promote_every_s: float = 60.0
    # UNAVAILABLE within this long after a SetAlias is counted apart (the detector swaps models).
    promotion_window_s: float = 20.0
    sample_every_s: float = 5.0
    drain_timeout_s: float = 120.0
    model: Path = SHARED / "models" / "yolox_nano.onnx"


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


def _say(text: str) -> None:
    print(f"soak: {text}", file=sys.stderr, flush=True)


class SoakError(RuntimeError):
    """The soak could not run (no model file, the detector never served); not a broken threshold."""


def _jpeg(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise SoakError("JPEG encoding failed")
    return bytes(data.tobytes())


def _noise_jpeg(seed: int, shape: tuple[int, int] = (96, 128)) -> bytes:
    """A small JPEG unique to ``seed`` (the ingestor derives frame ids from the bytes)."""
    return _jpeg(np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8))


def _street_images() -> list[Path]:
    return sorted((SHARED / "data" / "apollo-cars" / "val" / "images").glob("*.jpg"))


def prepare_folder(folder: Path) -> None:
    """FOLDER_FILES frames for the folder source: apollo-cars street images scaled to 640 px wide
    (Tansu keeps every record in memory: full-size frames at 10 fps would grow it 3 MB/s), or noise."""
    folder.mkdir(parents=True, exist_ok=True)
    streets = _street_images()
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
            data = _noise_jpeg(10_000 + i, (360, 640))
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
        seq = 1
        while not stop.is_set():
            seqs = list(range(seq, seq + self.batch))
            images = {s: _noise_jpeg(s) for s in seqs}

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
    k = 1
    while not stop.is_set():
        # wait_for with a timeout of 0 (a flip behind schedule) raises before looking at the event.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(0.01, k * every_s - rec.now()))
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


@dataclass(frozen=True)
class Inputs:
    """What the load sends, read before it starts (no file reads inside the event loop)."""

    run: str
    api_key: str
    public_ca: bytes
    image: bytes  # for Detect
    model: bytes
    model_file: str
    folder: Path  # the folder source's frames, under RUN_DIR/data (an allowed root)

    @classmethod
    def prepare(cls, cfg: services.StackConfig, opts: SoakOptions) -> Inputs:
        if not opts.model.is_file():
            raise SoakError(f"no model file {opts.model} (../shared/models/yolox_nano.onnx)")
        run = uuid.uuid4().hex[:8]
        streets = _street_images()
        folder = cfg.run_dir / "data" / f"soak-{run}"
        prepare_folder(folder)
        return cls(
            run=run,
            api_key=(cfg.run_dir / "api-key").read_text().strip(),
            public_ca=cfg.public_pki.ca.cert_file.read_bytes(),
            image=streets[0].read_bytes() if streets else _noise_jpeg(1, (375, 1242)),
            model=opts.model.read_bytes(),
            model_file=opts.model.name,
            folder=folder,
        )


async def soak(cfg: services.StackConfig, opts: SoakOptions, inputs: Inputs) -> SoakReport:
    run, image, folder = inputs.run, inputs.image, inputs.folder
    meta = (("authorization", f"Bearer {inputs.api_key}"),)
    credentials = grpc.ssl_channel_credentials(inputs.public_ca)
    started_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    async with grpc.aio.secure_channel(f"{services.HOST}:{cfg.ports.gateway}", credentials) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        detect = detector_pb2_grpc.DetectorServiceStub(channel)
        ingest = ingest_pb2_grpc.IngestServiceStub(channel)
        previous, versions = await register_versions(registry, meta, inputs.model, inputs.model_file, run)
        await wait_detector(detect, meta, image, versions[0])
        _say(f"{MODEL_NAME} versions {versions[0]} and {versions[1]} registered; load for {opts.duration_s:.0f} s")
        rec, stop, stop_sampling = Recorder(time.monotonic()), asyncio.Event(), asyncio.Event()
        sampling = asyncio.create_task(sampler(cfg.run_dir, opts.sample_every_s, rec, stop_sampling))
        folder_camera = f"soak-folder-{run}"
        spec = ingest_pb2.SourceSpec(
            kind=ingest_pb2.SOURCE_KIND_IMAGE_FOLDER, uri=str(folder), camera_id=folder_camera, max_fps=opts.folder_fps
        )
        spec.loop = True
        source = await ingest.StartSource(
            ingest_pb2.StartSourceRequest(spec=spec), metadata=meta, timeout=CONTROL_TIMEOUT_S
        )
        client = StreamClient(f"soak-client-{run}", opts.stream_fps, opts.stream_batch)
        period = opts.detect_clients / opts.detect_rps
        tasks = [
            asyncio.create_task(detect_client(detect, meta, image, period, i * period / opts.detect_clients, rec, stop))
            for i in range(opts.detect_clients)
        ]
        tasks.append(asyncio.create_task(client.run(ingest, meta, rec, stop)))
        tasks.append(asyncio.create_task(promoter(registry, meta, versions, opts.promote_every_s, rec, stop)))
        await asyncio.sleep(opts.duration_s)  # the soak itself
        stop.set()
        await asyncio.gather(*tasks)
        _say(f"load stopped: {len(rec.calls)} calls, {len(rec.promotions)} promotions; waiting for the frames")
        stop_sampling.set()
        await sampling
        stopped = await ingest.StopSource(
            ingest_pb2.StopSourceRequest(source_id=source.source.source_id), metadata=meta, timeout=CONTROL_TIMEOUT_S
        )
        published = stopped.source.frames_published
        rows = await drain(
            cfg.postgres_dsn_with_password(),
            {folder_camera: published, client.camera: len(client.acknowledged)},
            opts.drain_timeout_s,
        )
        answered = sum(c.kind == "detect" for c in rec.calls)
        notes = [
            f"detect: {answered} calls, {answered / opts.duration_s:.2f}/s (target {opts.detect_rps:g}/s from "
            f"{opts.detect_clients} clients; a client behind schedule sends at once)"
        ]
        if previous:
            restore = registry_pb2.SetAliasRequest(name=MODEL_NAME, alias=ALIAS, version=previous)
            await registry.SetAlias(restore, metadata=meta, timeout=CONTROL_TIMEOUT_S)
            notes.append(f"{MODEL_NAME}@{ALIAS} set back to version {previous}")
    folder_rows, folder_seqs = rows[folder_camera]
    client_rows, client_seqs = rows[client.camera]
    frames = [
        Frames(
            "folder source (10 fps, loop)"
            if opts.folder_fps == 10
            else f"folder source ({opts.folder_fps:g} fps, loop)",
            folder_camera,
            acknowledged=published,
            stored=len(folder_seqs),
            duplicates=folder_rows - len(folder_seqs),
            missing=max(0, published - len(folder_seqs)),
        ),
        Frames(
            "client stream",
            client.camera,
            acknowledged=len(client.acknowledged),
            stored=len(client_seqs),
            duplicates=client_rows - len(client_seqs),
            missing=len(client.acknowledged - client_seqs),
        ),
    ]
    processes = [g for name, s in sorted(rec.samples.items()) if (g := growth(name, s, opts.warmup_s)) is not None]
    return SoakReport(
        duration_s=opts.duration_s,
        warmup_s=opts.warmup_s,
        promotion_window_s=opts.promotion_window_s,
        started_at=started_at,
        processes=processes,
        calls=rec.calls,
        promotions=rec.promotions,
        frames=frames,
        died=rec.died,
        notes=notes,
    )


def run(cfg: services.StackConfig, opts: SoakOptions) -> SoakReport:
    """The soak against the stack of ``cfg``: what was not running is started, and stopped after."""
    names = stack.INFRA + stack.DAEMONS
    absent = [n for n in names if Process(n, [], cfg.run_dir, ready=lambda: True).pid() is None]
    if absent:
        _say(f"starting {', '.join(absent)}")
        stack.up(cfg, names)
    inputs = None
    try:
        inputs = Inputs.prepare(cfg, opts)
        return asyncio.run(soak(cfg, opts, inputs))
    finally:
        if inputs is not None:
            shutil.rmtree(inputs.folder, ignore_errors=True)
        for name in reversed(absent):
            Process(name, [], cfg.run_dir, ready=lambda: True).stop()


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m`` or ``1h``."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = text.strip().lower()
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 10m)") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=parse_duration, default=600.0, help="load time, e.g. 10m")
    parser.add_argument(
        "--warmup", type=parse_duration, default=None, help="growth is measured after it (default: a fifth)"
    )
    parser.add_argument("--promote-every", type=parse_duration, default=60.0, help="alias flip period")
    parser.add_argument("--json", type=Path, default=None, help="report file (default RUN_DIR/soak-report.json)")
    args = parser.parse_args(argv)
    cfg = stack.config_from_env()
    warmup = args.warmup if args.warmup is not None else args.duration / 5
    opts = SoakOptions(duration_s=args.duration, warmup_s=warmup, promote_every_s=args.promote_every)
    try:
        report = run(cfg, opts)
    except (SoakError, grpc.RpcError) as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 2
    out = args.json or cfg.run_dir / "soak-report.json"
    out.write_text(json.dumps({**report.to_json(), "violations": violations(report, Thresholds())}, indent=2) + "\n")
    sys.stdout.write(markdown(report))
    print(f"soak: report in {out}", file=sys.stderr)
    return 1 if violations(report) else 0


if __name__ == "__main__":
    raise SystemExit(main())
