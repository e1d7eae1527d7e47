"""``make bench-detect``: the same model and images through three paths, at concurrency 1 and 8:

- raw: ONNX Runtime in this process, one image per call, with the detector's own decode,
  letterbox and post-processing (what a user gets without carmesh);
- detector: the detector daemon called directly over gRPC (micro-batching on);
- gateway: the same detector behind the gateway (API key auth, rate limiter, proxy).

Prints images/s, p50 and p99 latency and the ratio to raw, and writes them to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import onnxruntime as ort

from bench.common import free_port, write_section
from carmesh.v1 import detector_pb2, detector_pb2_grpc
from carmesh_cli.names import PRESETS
from detector.detector import DetectDefaults
from detector.engine import EngineOptions, ModelRef, ModelSpec, load_engine
from detector.imaging import decode_image
from detector.postprocess import PostprocessParams, postprocess
from registry_gateway.onnx_check import inspect_detector

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@dataclass
class Result:
    path: str
    concurrency: int
    images: int
    seconds: float
    latencies_ms: list[float]

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def model_spec(model: Path) -> tuple[str, tuple[str, ...]]:
    """Family and class names as the registry would record them (COCO names when the file has none)."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = () if "names" in session.get_modelmeta().custom_metadata_map else tuple(PRESETS["coco"])
    spec = inspect_detector(model, None, names)
    return spec.family.value, names


def bench_raw(
    model: Path, family: str, names: tuple[str, ...], images: list[bytes], concurrency: int, count: int
) -> Result:
    engine = load_engine(
        model,
        ModelSpec(ref=ModelRef("bench", "0"), family=family, class_names=names),
        EngineOptions(providers=["CPUExecutionProvider"]),
    )
    defaults = DetectDefaults()
    params = PostprocessParams(
        score_threshold=defaults.score_threshold,
        iou_threshold=defaults.iou_threshold,
        class_ids=None,
        max_detections=defaults.max_detections,
    )

    def one(data: bytes) -> float:
        started = time.perf_counter()
        tensor, box = engine.preprocess(decode_image(data, 40_000_000))
        raw = engine.run(tensor[None])
        postprocess(raw[0], family, engine.input_hw, box, params)
        return (time.perf_counter() - started) * 1000

    for data in images[:3]:
        one(data)
    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        latencies = list(pool.map(one, (images[i % len(images)] for i in range(count))))
        seconds = time.perf_counter() - started
    return Result("raw ONNX Runtime", concurrency, count, seconds, latencies)


async def bench_grpc(
    label: str, address: str, key: str | None, images: list[bytes], concurrency: int, count: int
) -> Result:
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        stub = detector_pb2_grpc.DetectorServiceStub(channel)
        for data in images[:3]:
            await stub.Detect(detector_pb2.DetectRequest(image=data), metadata=metadata, timeout=60)
        latencies: list[float] = []
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < count:
                data = images[next_index % len(images)]
                next_index += 1
                started = time.perf_counter()
                await stub.Detect(detector_pb2.DetectRequest(image=data), metadata=metadata, timeout=60)
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Result(label, concurrency, len(latencies), seconds, latencies)


def start(module: str, args: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    from devstack.services import grpc_serving

    argv = [sys.executable, "-m", module, "--host", "127.0.0.1", "--grpc-port", str(port), "--metrics-port", "0"]
    # Plaintext on loopback, asked for explicitly: the figures are of our code path, not of TLS.
    argv += ["--mesh-plaintext", *(["--public-plaintext"] if module == "gateway" else []), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 60
    while not grpc_serving(f"127.0.0.1:{port}"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{module} did not start; see {log}")
        time.sleep(0.2)
    return proc


def table(results: list[Result]) -> str:
    raw = {r.concurrency: r.images_per_s for r in results if r.path.startswith("raw")}
    lines = ["| path | concurrency | images/s | p50 ms | p99 ms | vs raw |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r.path} | {r.concurrency} | {r.images_per_s:.1f} | {r.percentile(0.5):.1f} | "
            f"{r.percentile(0.99):.1f} | {r.images_per_s / raw[r.concurrency]:.2f}x |"
        )
    return "\n".join(lines)


def report(command: str, model: Path, count: int, image_desc: str, body: str) -> str:
    return (
        f"## Detection: raw ONNX Runtime vs detector vs gateway\n\n"
        f"Command: `{command}`  \nModel: `{model.name}`; {image_desc}; {count} requests per row; "
        f"machine: {os.cpu_count()} CPUs, {platform.machine()}, onnxruntime {ort.__version__}; "
        f"run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n{body}\n\n"
        "Raw: full `cv2.imdecode`, letterbox, one `session.run` per image on N threads, post-processing, "
        "in one process with no RPC. The detector decodes JPEGs larger than its input at a DCT-reduced "
        "size (exact box mapping), batches, and overlaps runs. Client, gateway, detector and raw "
        "baseline share the same 2 cores; the ratio is images/s of the path over raw at the same "
        "concurrency."
    )


async def run_services(
    model: Path,
    family: str,
    names: tuple[str, ...],
    images: list[bytes],
    count: int,
    concurrencies: list[int],
    results: list[Result],
    notes: list[str],
) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="carmesh-bench-"))
    det_port, gw_port = free_port(), free_port()
    key = "bench-key-" + os.urandom(8).hex()
    (workdir / "keys").write_text(f"{key} bench detect\n")
    det_args = ["--model-path", str(model), "--model-family", family]
    if names:
        det_args += ["--class-names", ",".join(names)]
    detector = start("detector", det_args, det_port, workdir / "detector.log")
    gateway = start(
        "gateway",
        [
            "--detector-addrs",
            f"127.0.0.1:{det_port}",
            "--api-keys-file",
            str(workdir / "keys"),
            "--rate-limit-rps",
            "0",
        ],
        gw_port,
        workdir / "gateway.log",
    )
    try:
        targets = [
            ("detector direct", f"127.0.0.1:{det_port}", None),
            ("gateway -> detector", f"127.0.0.1:{gw_port}", key),
        ]
        for concurrency in concurrencies:
            for label, address, api_key in targets:
                result = await bench_grpc(label, address, api_key, images, concurrency, count)
                results.append(result)
                print(
                    f"{result.path:<22} c={concurrency}: {result.images_per_s:6.1f} img/s  "
                    f"p50 {result.percentile(0.5):6.1f} ms  p99 {result.percentile(0.99):6.1f} ms",
                    flush=True,
                )
        peak = peak_rss_mb(detector.pid)
        print(f"detector peak RSS: {peak:.0f} MB", flush=True)
        notes.append(f"Detector peak RSS over the run (VmHWM): {peak:.0f} MB.")
    finally:
        for proc in (gateway, detector):
            proc.terminate()
            proc.wait(timeout=30)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.detect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=SHARED / "models" / "yolox_nano.onnx")
    parser.add_argument("--images", type=Path, default=SHARED / "data" / "apollo-cars" / "val" / "images")
    parser.add_argument("--count", type=int, default=160, help="requests per path and concurrency")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--write", type=Path, help="update this markdown file's bench-detect section")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"model {args.model} not found; pass --model path.onnx (make bench-detect MODEL=...)")
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:20]
    if not files:
        parser.error(f"no images in {args.images}")
    images = [p.read_bytes() for p in files]
    family, names = model_spec(args.model)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    results: list[Result] = []
    for concurrency in concurrencies:
        result = bench_raw(args.model, family, names, images, concurrency, args.count)
        results.append(result)
        print(
            f"{result.path:<22} c={concurrency}: {result.images_per_s:6.1f} img/s  "
            f"p50 {result.percentile(0.5):6.1f} ms  p99 {result.percentile(0.99):6.1f} ms",
            flush=True,
        )
    notes: list[str] = []
    asyncio.run(run_services(args.model, family, names, images, args.count, concurrencies, results, notes))
    order = {"raw ONNX Runtime": 0, "detector direct": 1, "gateway -> detector": 2}
    results.sort(key=lambda r: (r.concurrency, order[r.path]))
    body = "\n\n".join([table(results), *notes])
    print("\n" + body)
    by = {(r.path, r.concurrency): r.images_per_s for r in results}
    top = max(concurrencies)
    ratio = by[("gateway -> detector", top)] / by[("raw ONNX Runtime", top)]
    print(f"\ngateway / raw at concurrency {top}: {ratio:.2f}x")
    if args.write:
        size = decode_image(images[0], 40_000_000).shape
        text = report(
            "make bench-detect",
            args.model,
            args.count,
            f"{len(images)} images of {size[1]}x{size[0]} from {args.images.name}/",
            body,
        )
        # One section per model, as bench.accuracy does: YOLOX-nano's and our trained model's side by side.
        write_section(args.write, f"bench-detect-{args.model.stem}", text)
        print(f"written to {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
