"""``python -m bench.export_sizes``: one trained model exported at several input sizes, for the accuracy/speed
trade of the served size (``make bench-export-sizes KERAS=.../keras/body.keras``).

The body is fully convolutional, so the same weights serve any size that divides by 32. Each size is
exported with the trainer's own exporter, then scored by ``bench.accuracy`` (car AP50 on apollo-cars
val, through the detector's letterbox, decode and NMS) and timed by ``bench.detect`` (raw ONNX Runtime,
detector, gateway at concurrency 1 and 8, and the detector's peak RSS). A model trained for a smaller
size sees its cars at that size in training too (``Recipe.image_scale`` follows the export size); the
same weights exported smaller see them smaller than they were trained on, so the smaller sizes' AP here
is a floor for what a job trained at that size (``carmesh train --size WxH``) reaches.

``--precisions float32,int8`` also quantizes each size with the trainer's int8 export
(``trainer_worker.quantize``, calibrated on apollo-cars train frames), one row per size and precision.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT")
    return int(match[1]), int(match[2])


def export_all(
    keras_file: Path, preset: str, classes: tuple[str, ...], sizes: list[tuple[int, int]], out_dir: Path
) -> list[Path]:
    from trainer.modelspec import ModelSpec
    from trainer_worker.export import export_onnx
    from trainer_worker.model import build_body

    paths = []
    for width, height in sizes:
        spec = ModelSpec(preset, classes, width, height)
        body = build_body(spec)
        body.load_weights(str(keras_file))
        path = out_dir / f"{keras_file.stem}-{width}x{height}.onnx"
        info = export_onnx(body, spec, path)
        print(f"exported {path} ({info.size_bytes / 1e6:.1f} MB)", flush=True)
        paths.append(path)
    return paths


def quantized(path: Path, calibration: list[Path]) -> Path:
    from trainer_worker.quantize import quantize_int8

    out = path.with_name(f"{path.stem}-int8.onnx")
    info = quantize_int8(path, out, calibration)
    print(f"quantized {out} ({info.size_bytes / 1e6:.1f} MB, {info.calibration_frames} frames)", flush=True)
    return out


def _run(module: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, check=True)
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.export_sizes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keras", type=Path, required=True, help="a job's keras/body.keras (MLflow artifacts)")
    parser.add_argument("--carmesh-json", type=Path, help="the job's model/carmesh.json (default: beside --keras)")
    parser.add_argument("--preset", default="n", help="the body's preset (n or s)")
    parser.add_argument(
        "--sizes", type=lambda t: [_size(s) for s in t.split(",")], default=[(960, 544), (800, 448), (640, 352)]
    )
    parser.add_argument("--out", type=Path, default=REPO / "out" / "export-sizes")
    parser.add_argument("--count", default="160", help="requests per bench.detect row")
    parser.add_argument(
        "--precisions", default="float32", help="comma-separated: float32, int8 (the trainer's int8 export)"
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        default=REPO.parent / "shared" / "data" / "apollo-cars" / "train" / "images",
        help="folder of training frames for the int8 calibration",
    )
    args = parser.parse_args(argv)
    meta_path = args.carmesh_json or args.keras.parent.parent / "model" / "carmesh.json"
    classes = tuple(json.loads(meta_path.read_text())["class_names"])
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [
        "| export size | precision | car AP50 | >= 40 px | >= 160 px | gateway img/s c=1 | c=8 | raw ORT img/s c=8 "
        "| detector peak RSS c=8 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    calibration = sorted(args.calibration.glob("*.jpg")) + sorted(args.calibration.glob("*.png"))
    models = []
    for path in export_all(args.keras, args.preset, classes, args.sizes, args.out):
        size = path.stem.rsplit("-", 1)[1]
        if "float32" in precisions:
            models.append((size, "float32", path))
        if "int8" in precisions:
            models.append((size, "int8", quantized(path, calibration)))
    for size, precision, path in models:
        accuracy = _run("bench.accuracy", "--model", str(path))
        speed = _run("bench.detect", "--model", str(path), "--count", args.count)
        print(accuracy, speed, sep="\n", flush=True)
        ap = dict(re.findall(r"^\| (all cars|cars >= \d+ px tall) \| \d+ \| ([\d.]+) \|", accuracy, flags=re.M))
        gateway = dict(re.findall(r"^\| gateway -> detector \| (\d+) \| ([\d.]+) \|", speed, flags=re.M))
        raw = dict(re.findall(r"^\| raw ONNX Runtime \| (\d+) \| ([\d.]+) \|", speed, flags=re.M))
        rss = re.search(r"detector peak RSS: ([\d.]+ MB)", speed)
        rows.append(
            f"| {size} | {precision} | {ap.get('all cars', '-')} | {ap.get('cars >= 40 px tall', '-')} | "
            f"{ap.get('cars >= 160 px tall', '-')} | {gateway.get('1', '-')} | {gateway.get('8', '-')} | "
            f"{raw.get('8', '-')} | {rss.group(1) if rss else '-'} |"
        )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
