"""``python -m bench.street_detector OUT_DIR``: a car/van detector for the synthetic street video
(tracking.scenario), trained by our own trainer on frames of the same renderer.

The COCO YOLOX-nano finds none of the drawn vehicles, so the whole-mesh counting test
(tests/e2e/test_mesh_counting.py) needs a model that does. This writes a KITTI-layout data set
of rendered frames (seeds other than the test video's; labels from the scene's truth: vehicles
at least ``MIN_VISIBLE`` visible are targets, less visible ones don't-care), trains yolov8n with
``trainer_worker.loop.train`` in this process (the recipe of the trainer's short jobs), exports
the served ONNX with ``trainer_worker.export`` (parity-checked against Keras, as a job does) and
scores it on held-out rendered frames (AP50 per class at the export size).

    python -m bench.street_detector out/street-detector --budget-s 240   # `make street-detector`

Writes OUT_DIR/model.onnx, OUT_DIR/carmesh.json (the registry's manifest) and OUT_DIR/report.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tracking.scenario import CLASS_NAMES, make_scenario

# The test video is seed 0 (tests/tracking and tests/tracker use 0..9): train and score on others.
TRAIN_SEEDS = tuple(range(100, 112))
VAL_SEEDS = (200, 201)
MIN_VISIBLE = 0.3  # a vehicle less visible than this is don't-care: neither taught nor punished
EXPORT_SIZE = (640, 352)  # width, height: the 640x360 frames letterboxed with 8 px to spare
# The trainer's short-job schedule (trainer.planning.SHORT_SCHEDULE) for a budget of a few minutes.
SHORT_RECIPE: dict[str, Any] = {"batch_size": 2, "crop_width": 512, "crop_height": 256, "warmup_steps": 30}


@dataclass(frozen=True)
class Split:
    name: str
    seeds: tuple[int, ...]
    every_frames: int


def write_dataset(out: Path, splits: tuple[Split, ...], frames: int = 540) -> Path:
    """Rendered frames of each split's scenes (every ``every_frames``-th) with KITTI labels."""
    import cv2

    for split in splits:
        images, labels = out / split.name / "images", out / split.name / "labels"
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for seed in split.seeds:
            scenario = make_scenario(seed)
            truth = scenario.truth()
            background = scenario.background()
            rng = np.random.default_rng(seed + 1)
            for frame in range(0, min(frames, scenario.frames), split.every_frames):
                rows = []
                for t in truth[frame]:
                    name = CLASS_NAMES[t.class_id] if t.visibility >= MIN_VISIBLE else "DontCare"
                    x1, y1, x2, y2 = t.box_xyxy
                    rows.append(f"{name} 0.00 0 0.00 {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f} 0 0 0 0 0 0 0")
                stem = f"s{seed}-f{frame:04d}"
                image = scenario.render(frame, background, rng)
                cv2.imwrite(str(images / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
                (labels / f"{stem}.txt").write_text("".join(r + "\n" for r in rows))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.street_detector",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out", type=Path, help="folder for model.onnx, carmesh.json and report.json")
    parser.add_argument("--budget-s", type=float, default=240.0, help="training seconds (the schedule anneals to it)")
    parser.add_argument("--every-frames", type=int, default=6, help="take every Nth frame of a training scene")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads")
    parser.add_argument("--seed", type=int, default=0, help="the recipe's seed")
    args = parser.parse_args(argv)

    from trainer_worker.runtime import prefer_onednn

    prefer_onednn()  # as the trainer's workers do
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from trainer.data import load_folder
    from trainer.modelspec import ModelSpec
    from trainer_worker.export import check_parity, export_onnx
    from trainer_worker.loop import Progress, Recipe, train
    from trainer_worker.predict import evaluate_on

    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="street-detector-") as tmp:
        root = write_dataset(
            Path(tmp) / "data", (Split("train", TRAIN_SEEDS, args.every_frames), Split("val", VAL_SEEDS, 10))
        )
        data = load_folder(root, list(CLASS_NAMES), [])
        rendered_s = time.monotonic() - started
        print(f"rendered {len(data.train)} train / {len(data.val)} val frames in {rendered_s:.0f} s", flush=True)
        recipe = replace(
            Recipe(), time_budget_s=args.budget_s, epochs=100_000, loader_threads=1, seed=args.seed, **SHORT_RECIPE
        )
        spec = ModelSpec("n", CLASS_NAMES, *EXPORT_SIZE)

        def on_progress(p: Progress) -> None:
            if p.epoch_metrics is not None:
                m = p.epoch_metrics
                at_s = time.monotonic() - started
                print(f"{at_s:5.0f}s epoch {p.epoch + 1} step {p.step} loss {m.get('loss', 0.0):.3f}", flush=True)

        train_started = time.monotonic()
        result = train(
            spec, recipe, data, None, Path(tmp) / "ckpt", on_progress, lambda: False, evaluate_every_epochs=0
        )
        train_s = time.monotonic() - train_started
        report = evaluate_on(result.body, spec, data.val)
        info = export_onnx(result.body, spec, args.out / "model.onnx")
        frames = np.stack([_served_input(im.path, spec.input_hw) for im in data.val[:2]])
        parity = check_parity(result.body, spec, info.path, frames)
        if not parity.ok:
            raise SystemExit(f"the exported ONNX does not match Keras: {parity.describe()}")
        steps = int(result.history[-1]["steps"]) if result.history else 0
        summary = {
            "command": f"python -m bench.street_detector OUT --budget-s {args.budget_s:g} "
            f"--every-frames {args.every_frames} --threads {args.threads} --seed {args.seed}",
            "train_seeds": list(TRAIN_SEEDS),
            "val_seeds": list(VAL_SEEDS),
            "train_images": len(data.train),
            "val_images": len(data.val),
            "train_s": round(train_s, 1),
            "steps": steps,
            "map50": round(float(report.map50), 4),
            "map50_95": round(float(report.map50_95), 4),
            "ap50": {n: round(float(a), 4) for n, a in zip(CLASS_NAMES, report.ap50, strict=True)},
            "sha256": info.sha256,
            "size_bytes": info.size_bytes,
            "parity": parity.describe(),
        }
    (args.out / "carmesh.json").write_text(
        json.dumps(
            {"family": "yolov8", "class_names": list(CLASS_NAMES), "input_width": EXPORT_SIZE[0]}
            | {"input_height": EXPORT_SIZE[1], "sha256": info.sha256, "size_bytes": info.size_bytes}
            | {"onnx_path": "model.onnx", "trained_on": "tracking.scenario seeds " + ",".join(map(str, TRAIN_SEEDS))},
            indent=2,
        )
        + "\n"
    )
    (args.out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2), flush=True)
    return 0


def _served_input(path: Path, input_hw: tuple[int, int]) -> np.ndarray:
    """A frame as the detector feeds the model: RGB, letterboxed, CHW, 0..1."""
    import cv2

    from kit.letterbox import letterbox

    bgr: Any = cv2.imread(str(path), cv2.IMREAD_COLOR)
    canvas = letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), input_hw)[0]
    return canvas.transpose(2, 0, 1).astype(np.float32) / 255.0


if __name__ == "__main__":
    raise SystemExit(main())
