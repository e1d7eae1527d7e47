"""``make bench-accuracy``: car AP on apollo-cars val for a served ONNX detector, with the
evaluator the trainer uses (COCO-style, checked against pycocotools in tests/trainer).

Van/truck/bus/ignore boxes are "don't care" for the car class (a detection on them is neither
right nor wrong); reported for all cars and for cars at least 40, 80, 160 and 320 px tall (`--min-heights`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.common import write_section
from bench.detect import model_spec
from detector.detector import DetectDefaults
from detector.engine import EngineOptions, ModelRef, ModelSpec, load_engine
from detector.imaging import decode_for_input
from detector.postprocess import PostprocessParams, postprocess
from trainer.evaluation import Detections, GroundTruth, evaluate

SHARED = Path(__file__).resolve().parents[2] / "shared"
DONT_CARE = {"van", "truck", "bus", "ignore", "dontcare"}


def ground_truth(label: Path) -> GroundTruth:
    boxes, ignore = [], []
    for line in label.read_text().splitlines():
        parts = line.split()
        if not parts or (parts[0].lower() != "car" and parts[0].lower() not in DONT_CARE):
            continue
        boxes.append([float(v) for v in parts[4:8]])
        ignore.append(parts[0].lower() != "car")
    return GroundTruth.of(np.array(boxes, np.float64).reshape(-1, 4), np.zeros(len(boxes), np.int64), ignore)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.accuracy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=SHARED / "models" / "yolox_nano.onnx")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "apollo-cars" / "val")
    parser.add_argument("--score-threshold", type=float, default=0.01)
    parser.add_argument(
        "--iou-threshold", type=float, default=DetectDefaults().iou_threshold, help="NMS IoU (default: the detector's)"
    )
    parser.add_argument(
        "--min-heights",
        default="40,80,160,320",
        help="comma-separated heights in source pixels: one row each for the cars at least that tall",
    )
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)
    try:
        min_heights = [float(h) for h in args.min_heights.split(",") if h.strip()]
    except ValueError:
        parser.error(f"--min-heights must be numbers separated by commas, got {args.min_heights!r}")
    family, names = model_spec(args.model)
    engine = load_engine(
        args.model,
        ModelSpec(ref=ModelRef("eval", "0"), family=family, class_names=names),
        EngineOptions(providers=["CPUExecutionProvider"]),
    )
    car = list(engine.class_names or names).index("car")
    params = PostprocessParams(
        score_threshold=args.score_threshold,
        iou_threshold=args.iou_threshold,
        class_ids=frozenset({car}),
        max_detections=100,
    )
    gts, dets = [], []
    images = sorted(args.data.glob("images/*.jpg"))
    started = time.perf_counter()
    for image in images:
        pixels, width, height = decode_for_input(image.read_bytes(), 40_000_000, engine.input_hw)
        tensor, box = engine.preprocess(pixels, (width, height))
        found = postprocess(engine.run(tensor[None])[0], family, engine.input_hw, box, params)
        gts.append(ground_truth(args.data / "labels" / f"{image.stem}.txt"))
        dets.append(Detections.of(found.boxes, found.scores, np.zeros(len(found.scores), np.int64)))
    seconds = time.perf_counter() - started
    rows = []
    bands: list[tuple[str, float | None]] = [("all cars", None)]
    bands += [(f"cars >= {h:g} px tall", h) for h in min_heights]
    for label, min_height in bands:
        report = evaluate(gts, dets, num_classes=1, min_height_px=min_height)
        rows.append(f"| {label} | {int(report.num_gt[0])} | {report.map50:.3f} | {report.map50_95:.3f} |")
    body = (
        f"## Accuracy of {args.model.name}: car AP on {args.data.parent.name}/{args.data.name}\n\n"
        f"Command: `make bench-accuracy MODEL={args.model}`  \n"
        f"Model: `{args.model.name}` ({family}); {len(images)} images in {seconds:.1f} s; score >= "
        f"{args.score_threshold}, NMS IoU {args.iou_threshold}; van/truck/bus/ignore boxes are don't-care.\n\n"
        "| cars | labelled | AP50 | AP50-95 |\n|---|---:|---:|---:|\n" + "\n".join(rows)
    )
    print(body)
    if args.write:
        write_section(args.write, f"bench-accuracy-{args.model.stem}", body)
        print(f"\nwritten to {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
