"""``make soak DURATION=10m``: a mixed load for DURATION against a ``make up`` stack (started, and
stopped after, when it is not running), watching every process of the stack (issue 19, point 6).

Through the gateway (TLS, the stack's API key): Detect at a fixed rate from several clients, a
looping folder source at 10 fps, a client streaming frames (each batch re-sent until OK, as a
retrying client must), and the champion alias flipped between two registered versions every
minute. /proc is sampled every few seconds for RSS and open fds of every pid in RUN_DIR/pids.
The report (bench/soak_report.py) goes to stdout as markdown and to a JSON file; the exit status
is 1 when a threshold is broken. The load itself is in bench/soak_load.py.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.soak_load import (
    ALIAS,
    CONTROL_TIMEOUT_S,
    MODEL_NAME,
    SHARED,
    Recorder,
    SoakError,
    StreamClient,
    detect_client,
    drain,
    noise_jpeg,
    prepare_folder,
    promoter,
    register_versions,
    sampler,
    say,
    street_images,
    wait_detector,
)
from bench.soak_report import Frames, SoakReport, Thresholds, growth, markdown, violations
from carmesh.v1 import detector_pb2_grpc, ingest_pb2, ingest_pb2_grpc, registry_pb2, registry_pb2_grpc
from devstack import __main__ as stack
from devstack import services
from devstack.procs import Process


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
        streets = street_images()
        folder = cfg.run_dir / "data" / f"soak-{run}"
        prepare_folder(folder)
        return cls(
            run=run,
            api_key=(cfg.run_dir / "api-key").read_text().strip(),
            public_ca=cfg.public_pki.ca.cert_file.read_bytes(),
            image=streets[0].read_bytes() if streets else noise_jpeg(1, (1080, 1920)),
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
        say(f"{MODEL_NAME} versions {versions[0]} and {versions[1]} registered; load for {opts.duration_s:.0f} s")
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
        say(f"load stopped: {len(rec.calls)} calls, {len(rec.promotions)} promotions; waiting for the frames")
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
        samples=rec.samples,
    )


def run(cfg: services.StackConfig, opts: SoakOptions) -> SoakReport:
    """The soak against the stack of ``cfg``: what was not running is started, and stopped after."""
    names = stack.INFRA + stack.DAEMONS
    absent = [n for n in names if Process(n, [], cfg.run_dir, ready=lambda: True).pid() is None]
    inputs = None
    try:
        if absent:
            say(f"starting {', '.join(absent)}")
            stack.up(cfg, names)
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
