"""``carmesh detect``: one Detect call per image, printed as a table or JSON lines, optionally drawn."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc

from carmesh.v1 import detector_pb2, detector_pb2_grpc
from carmesh_cli.connection import EXIT_AUTH, EXIT_OK, EXIT_RPC_FAILED, EXIT_USAGE, CliError, Connection, rpc_failure
from carmesh_cli.draw import Box, annotate, save_jpeg

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def expand_images(inputs: Sequence[str]) -> list[Path]:
    """Files as given; directories become their image files (sorted). Missing paths are a usage error."""
    images: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise CliError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in directory {path}", EXIT_USAGE)
            images += found
        elif path.is_file():
            images.append(path)
        else:
            raise CliError(f"no such image file or directory: {path}", EXIT_USAGE)
    return images


def output_paths(images: Sequence[Path], out_dir: Path) -> list[Path]:
    """``OUT/<input stem>.jpg``; a clash (same stem twice, or the input itself) gets a suffix."""
    taken: set[Path] = set()
    paths = []
    for image in images:
        candidate = out_dir / f"{image.stem}.jpg"
        counter = 1
        while candidate in taken or candidate.resolve() == image.resolve():
            counter += 1
            candidate = out_dir / f"{image.stem}-{counter}.jpg"
        taken.add(candidate)
        paths.append(candidate)
    return paths


def build_request(
    image: bytes,
    request_id: str,
    score_threshold: float | None,
    iou_threshold: float | None,
    classes: Sequence[str],
    max_detections: int,
) -> detector_pb2.DetectRequest:
    request = detector_pb2.DetectRequest(
        image=image, classes=list(classes), max_detections=max_detections, request_id=request_id
    )
    # Unset thresholds leave the detector's own defaults in force.
    if score_threshold is not None:
        request.score_threshold = score_threshold
    if iou_threshold is not None:
        request.iou_threshold = iou_threshold
    return request


def as_record(image: Path, reply: detector_pb2.DetectResponse, annotated: Path | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "image": str(image),
        "width": reply.image_width,
        "height": reply.image_height,
        "model": {"name": reply.model.name, "version": reply.model.version, "alias": reply.model.alias},
        "detections": [
            {
                "class_id": d.class_id,
                "class_name": d.class_name,
                "score": round(d.score, 4),
                "box": [round(d.box.x1, 1), round(d.box.y1, 1), round(d.box.x2, 1), round(d.box.y2, 1)],
            }
            for d in reply.detections
        ],
        "timings_ms": {
            "total": round(reply.timings.total_ms, 2),
            "inference": round(reply.timings.inference_ms, 2),
            "batch_size": reply.timings.batch_size,
        },
    }
    if annotated is not None:
        record["annotated"] = str(annotated)
    return record


def format_table(record: dict[str, Any]) -> str:
    model = record["model"]
    model_text = f"{model['name']} v{model['version']}" + (f" @{model['alias']}" if model["alias"] else "")
    count = len(record["detections"])
    lines = [
        f"{record['image']}: {record['width']}x{record['height']}, {count} detection{'s' if count != 1 else ''}"
        f" by {model_text}, {record['timings_ms']['total']:.1f} ms"
    ]
    if count:
        lines.append(f"  {'CLASS':<16} {'SCORE':>6} {'X1':>8} {'Y1':>8} {'X2':>8} {'Y2':>8}")
        for det in record["detections"]:
            x1, y1, x2, y2 = det["box"]
            lines.append(f"  {det['class_name']:<16} {det['score']:>6.3f} {x1:>8.1f} {y1:>8.1f} {x2:>8.1f} {y2:>8.1f}")
    if "annotated" in record:
        lines.append(f"  annotated: {record['annotated']}")
    return "\n".join(lines)


def run_detect(
    conn: Connection,
    inputs: Sequence[str],
    *,
    as_json: bool,
    out_dir: Path | None,
    score_threshold: float | None,
    iou_threshold: float | None,
    classes: Sequence[str],
    max_detections: int,
    timeout_s: float,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    images = expand_images(inputs)
    outputs: list[Path | None] = list(output_paths(images, out_dir)) if out_dir is not None else [None] * len(images)
    conn.ensure_reachable()
    stub = detector_pb2_grpc.DetectorServiceStub(conn.channel)
    failed = 0
    for image, out_path in zip(images, outputs, strict=True):
        try:
            data = image.read_bytes()
        except OSError as exc:
            print(f"error: cannot read {image}: {exc.strerror or exc}", file=stderr)
            failed += 1
            continue
        request = build_request(data, image.name, score_threshold, iou_threshold, classes, max_detections)
        try:
            reply = stub.Detect(request, timeout=timeout_s, metadata=conn.metadata)
        except grpc.RpcError as error:
            failure = rpc_failure(error, f"image {image}")
            if failure.exit_code == EXIT_AUTH:
                raise failure from None  # the next image would fail the same way
            print(f"error: {failure}", file=stderr)
            failed += 1
            continue
        if out_path is not None:
            boxes = [
                Box(d.box.x1, d.box.y1, d.box.x2, d.box.y2, d.class_name or str(d.class_id), d.score, d.class_id)
                for d in reply.detections
            ]
            try:
                save_jpeg(annotate(data, boxes, (reply.image_width, reply.image_height)), out_path)
            except OSError as exc:  # includes images Pillow cannot decode
                print(f"error: cannot write annotated {out_path}: {exc}", file=stderr)
                failed += 1
                out_path = None
        record = as_record(image, reply, out_path)
        print(json.dumps(record) if as_json else format_table(record), file=stdout, flush=True)
    return EXIT_RPC_FAILED if failed else EXIT_OK
