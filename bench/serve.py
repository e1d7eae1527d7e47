"""``make bench-serve``: the same model and images through every way carmesh's detector can be served,
at concurrency 1 and 8, images/s and p50/p99 latency of a whole request (encoded image in, boxes out):

- carmesh detector (ONNX Runtime): the detector daemon over gRPC, inference in-process;
- carmesh KServe v2 endpoint: the same detector's GRPCInferenceService, its ``-e2e`` model called with
  tritonclient (image bytes in, boxes out);
- carmesh detector, Triton backend (and with system shared memory): the detector daemon, its batches
  sent to a Triton server (pytriton's tritonserver from ``.venv-triton``) with tritonclient;
- Triton direct: this process decodes, letterboxes and post-processes with the detector's code and
  calls Triton itself with tritonclient's asyncio gRPC client (what a Triton user writes);
- BentoML service: ``bentoml serve`` of bento_detector, images posted over HTTP.

Every path is one entry of ``PATHS``: a label and an async context manager that starts what the
path needs and yields a coroutine function sending one image; adding a path is those few lines.
Writes the table to docs/benchmarks.md (``--write``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from bench.common import free_port, write_section
from bench.detect import Result, model_spec, peak_rss_mb, start
from carmesh.v1 import detector_pb2, detector_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TRITON_MODEL = "bench-model"

Send = Callable[[bytes], Awaitable[object]]


@dataclass(frozen=True)
class Setup:
    model: Path
    family: str
    names: tuple[str, ...]
    workdir: Path
    notes: list[str]

    def detector_args(self) -> list[str]:
        args = ["--model-path", str(self.model), "--model-family", self.family]
        return args + (["--class-names", ",".join(self.names)] if self.names else [])


@contextlib.asynccontextmanager
async def _detector(setup: Setup, label: str, extra: list[str]) -> AsyncIterator[Send]:
    port = free_port()
    proc = await asyncio.to_thread(start, "detector", [*setup.detector_args(), *extra], port, setup.workdir / "d.log")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = detector_pb2_grpc.DetectorServiceStub(channel)

            async def send(image: bytes) -> object:
                return await stub.Detect(detector_pb2.DetectRequest(image=image), timeout=120)

            yield send
        setup.notes.append(f"{label}: detector peak RSS {peak_rss_mb(proc.pid):.0f} MB.")
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)


@contextlib.asynccontextmanager
async def _triton(setup: Setup) -> AsyncIterator[str]:
    from devstack.pytriton_server import TRITON_PYTHON, launched

    if not TRITON_PYTHON.exists():
        raise SystemExit(f"{TRITON_PYTHON} missing: run `make setup` (it creates the pytriton environment)")
    server = launched({TRITON_MODEL: setup.model})
    url = await asyncio.to_thread(server.__enter__)
    try:
        yield url
    finally:
        await asyncio.to_thread(server.__exit__, None, None, None)


@contextlib.asynccontextmanager
async def detector_onnxruntime(setup: Setup) -> AsyncIterator[Send]:
    async with _detector(setup, "ONNX Runtime", []) as send:
        yield send


@contextlib.asynccontextmanager
async def _detector_on_triton(setup: Setup, label: str, extra: list[str]) -> AsyncIterator[Send]:
    async with _triton(setup) as url:
        flags = ["--backend", "triton", "--triton-url", url, "--triton-model", TRITON_MODEL]
        async with _detector(setup, label, [*flags, "--triton-model-control", "none", *extra]) as send:
            yield send


def detector_triton(setup: Setup) -> contextlib.AbstractAsyncContextManager[Send]:
    return _detector_on_triton(setup, "Triton backend", [])


def detector_triton_shm(setup: Setup) -> contextlib.AbstractAsyncContextManager[Send]:
    return _detector_on_triton(setup, "Triton backend, shm", ["--triton-shared-memory"])


@contextlib.asynccontextmanager
async def detector_kserve(setup: Setup) -> AsyncIterator[Send]:
    """carmesh's KServe v2 endpoint (the detector's GRPCInferenceService) called with tritonclient, as a
    KServe or Triton user would: the ``<model>-e2e`` model, encoded image in, boxes, scores, classes out."""
    import tritonclient.grpc.aio as tritonaio
    from tritonclient.grpc import InferInput

    port = free_port()
    proc = await asyncio.to_thread(start, "detector", setup.detector_args(), port, setup.workdir / "kserve.log")
    client = tritonaio.InferenceServerClient(f"127.0.0.1:{port}")
    model = f"{setup.model.stem}-e2e"  # a --model-path detector serves its model under the file's stem
    try:

        async def send(image: bytes) -> object:
            tensor = InferInput("IMAGE", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([image], dtype=object))
            return await client.infer(model, [tensor], client_timeout=120)

        yield send
        setup.notes.append(f"KServe v2: detector peak RSS {peak_rss_mb(proc.pid):.0f} MB.")
    finally:
        await client.close()
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)


@contextlib.asynccontextmanager
async def triton_direct(setup: Setup) -> AsyncIterator[Send]:
    """What a Triton user writes: decode, letterbox, infer with tritonclient, decode boxes (the detector's code)."""
    import tritonclient.grpc.aio as tritonaio
    from tritonclient.grpc import InferInput

    from detector.detector import DetectDefaults
    from detector.engine import EngineOptions, ModelRef, ModelSpec, load_engine
    from detector.imaging import decode_image
    from detector.postprocess import PostprocessParams, postprocess

    # The local session only describes the model (input size, names); inference goes to Triton.
    engine = load_engine(
        setup.model,
        ModelSpec(ref=ModelRef("bench", "0"), family=setup.family, class_names=setup.names),
        EngineOptions(providers=["CPUExecutionProvider"], intra_op_threads=1),
    )
    d = DetectDefaults()
    params = PostprocessParams(d.score_threshold, d.iou_threshold, d.max_detections)
    pool = ThreadPoolExecutor(8, thread_name_prefix="bench-pre")
    async with _triton(setup) as url:
        client = tritonaio.InferenceServerClient(url)
        loop = asyncio.get_running_loop()
        try:

            async def send(image: bytes) -> object:
                tensor, box = await loop.run_in_executor(
                    pool, lambda: engine.preprocess(decode_image(image, 40_000_000))
                )
                infer_input = InferInput(engine.input_name, [1, *tensor.shape], "FP32")
                infer_input.set_data_from_numpy(tensor[None])
                result = await client.infer(TRITON_MODEL, [infer_input], client_timeout=120)
                raw = result.as_numpy(result.get_response().outputs[0].name)
                return await loop.run_in_executor(
                    pool, postprocess, np.asarray(raw)[0], engine.family, engine.input_hw, box, params
                )

            yield send
        finally:
            await client.close()
            pool.shutdown()


@contextlib.asynccontextmanager
async def bentoml_service(setup: Setup) -> AsyncIterator[Send]:
    import httpx

    from bento_detector.local import served

    env = {
        "BENTOML_HOME": str(setup.workdir / "bentoml"),
        "CARMESH_BENTO_MODEL_PATH": str(setup.model),
        "CARMESH_BENTO_MESH_PLAINTEXT": "true",
        "CARMESH_BENTO_MODEL_FAMILY": setup.family,
        "CARMESH_BENTO_CLASS_NAMES": ",".join(setup.names),
    }
    server = served(env, log_file=setup.workdir / "bentoml.log")
    url = await asyncio.to_thread(server.__enter__)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:

            async def send(image: bytes) -> object:
                reply = await client.post("/detect", files={"image": ("image.jpg", image)})
                if reply.status_code != 200:
                    raise RuntimeError(f"BentoML answered {reply.status_code}: {reply.text[:500]}")
                return reply.json()

            yield send
    finally:
        await asyncio.to_thread(server.__exit__, None, None, None)


@dataclass(frozen=True)
class ServePath:
    label: str
    open: Callable[[Setup], contextlib.AbstractAsyncContextManager[Send]]


PATHS = [
    ServePath("carmesh detector (ONNX Runtime)", detector_onnxruntime),
    ServePath("carmesh KServe v2 endpoint (tritonclient)", detector_kserve),
    ServePath("carmesh detector, Triton backend", detector_triton),
    ServePath("carmesh detector, Triton backend, shm", detector_triton_shm),
    ServePath("Triton direct (tritonclient)", triton_direct),
    ServePath("BentoML service", bentoml_service),
]
BASELINE = PATHS[0].label


async def measure(label: str, send: Send, images: list[bytes], concurrency: int, count: int) -> Result:
    for image in images[:3]:  # warm-up: connections, first batches
        await send(image)
    latencies: list[float] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            image = images[next_index % len(images)]
            next_index += 1
            started = time.perf_counter()
            await send(image)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(label, concurrency, len(latencies), time.perf_counter() - started, latencies)


def table(results: list[Result]) -> str:
    base = {r.concurrency: r.images_per_s for r in results if r.path == BASELINE}
    lines = [
        "| path | concurrency | images/s | p50 ms | p99 ms | vs carmesh ONNX Runtime |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: r.concurrency):
        ratio = f"{r.images_per_s / base[r.concurrency]:.2f}x" if r.concurrency in base else "-"
        lines.append(
            f"| {r.path} | {r.concurrency} | {r.images_per_s:.1f} | {r.percentile(0.5):.1f} | "
            f"{r.percentile(0.99):.1f} | {ratio} |"
        )
    return "\n".join(lines)


async def run(
    setup: Setup, paths: list[ServePath], images: list[bytes], concurrencies: list[int], count: int
) -> list[Result]:
    results = []
    for path in paths:
        async with path.open(setup) as send:
            for concurrency in concurrencies:
                result = await measure(path.label, send, images, concurrency, count)
                results.append(result)
                print(
                    f"{path.label:<40} c={concurrency}: {result.images_per_s:6.1f} img/s  "
                    f"p50 {result.percentile(0.5):7.1f} ms  p99 {result.percentile(0.99):7.1f} ms",
                    flush=True,
                )
    return results


def ratios(results: list[Result]) -> list[str]:
    by = {(r.path, r.concurrency): r.images_per_s for r in results}
    lines = []
    for concurrency in sorted({r.concurrency for r in results}):
        backend = by.get(("carmesh detector, Triton backend", concurrency))
        direct = by.get(("Triton direct (tritonclient)", concurrency))
        if backend and direct:
            lines.append(f"Triton backend / Triton direct at concurrency {concurrency}: {backend / direct:.2f}x.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=SHARED / "models" / "yolox_nano.onnx")
    parser.add_argument("--images", type=Path, default=SHARED / "data" / "apollo-cars" / "val" / "images")
    parser.add_argument("--count", type=int, default=100, help="requests per path and concurrency")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--paths", default="", help="comma-separated labels' first words to run (default: all)")
    parser.add_argument("--write", type=Path, help="update this markdown file's bench-serve section")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"model {args.model} not found; pass --model path.onnx (make bench-serve MODEL=...)")
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:20]
    if not files:
        parser.error(f"no images in {args.images}")
    images = [p.read_bytes() for p in files]
    family, names = model_spec(args.model)
    wanted = [w.strip() for w in args.paths.split(",") if w.strip()]
    paths = [p for p in PATHS if not wanted or any(p.label.startswith(w) for w in wanted)]
    setup = Setup(args.model, family, names, Path(tempfile.mkdtemp(prefix="carmesh-bench-serve-")), [])
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    load_before = os.getloadavg()[0]
    results = asyncio.run(run(setup, paths, images, concurrencies, args.count))
    # Other work on the machine moves these numbers; the load says how much there was.
    setup.notes.append(f"Load average (1 min) before the run {load_before:.1f}, after {os.getloadavg()[0]:.1f}.")
    body = "\n\n".join([table(results), " ".join(ratios(results)), *setup.notes])
    print("\n" + body)
    if args.write:
        text = (
            "## Serving paths: carmesh detector vs Triton vs BentoML\n\n"
            f"Command: `make bench-serve`  \nModel: `{args.model.name}`; {len(images)} images from "
            f"{args.images.name}/; {args.count} requests per row, each a whole request (encoded image in, "
            f"detections out); machine: {os.cpu_count()} CPUs, {platform.machine()}, onnxruntime "
            f"{ort.__version__}, Python {sys.version.split()[0]}; run "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n{body}\n\n"
            "Triton is pytriton 0.7.0's tritonserver 2.51 running the ONNX file with ONNX Runtime inside a "
            "Python-backend callable (it has no onnxruntime backend), its dynamic batcher on (max batch 8, "
            "2 ms queue delay). Client, servers and Triton share the same cores."
        )
        write_section(args.write, "bench-serve", text)
        print(f"written to {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
