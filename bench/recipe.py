"""``python -m bench.recipe``: one training recipe variant on apollo-cars within a time budget, scored
by the issue's protocol (car AP50 on val, van/truck/bus/ignore as don't-care, all cars and cars
>= 40 px tall, at the export size, 960x544 unless ``--size``).

For comparing recipes, not for a model to ship: it calls ``trainer_worker.loop.train`` in this process
(no daemon, no MLflow). Variants are only comparable when they ran under the same conditions; run
them side by side (``--threads 1`` each), so that every one gets the same share of the machine:

    python -m bench.recipe base --budget-s 1500 &
    python -m bench.recipe mosaic --budget-s 1500 --set mosaic_p=0.5 &
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from trainer_worker.runtime import prefer_onednn

SHARED = Path(__file__).resolve().parents[2] / "shared"
DONT_CARE = ["van", "truck", "bus"]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.recipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", help="the variant's name in the output")
    parser.add_argument("--budget-s", type=float, default=1500.0, help="training seconds (the schedule anneals to it)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a trainer_worker.loop.Recipe field, e.g. mosaic_p=0.5 (repeatable)",
    )
    parser.add_argument("--classes", default="car", help="target classes, comma-separated (scored: car)")
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow intra-op threads")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "apollo-cars")
    parser.add_argument("--size", default="960x544", metavar="WxH", help="model input size, scored at it too")
    parser.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="FILE.weights.h5",
        help="keep the trained (EMA) weights, e.g. to score them again another way",
    )
    args = parser.parse_args(argv)
    prefer_onednn()  # as the trainer's workers do

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import numpy as np

    from trainer.data import load_folder
    from trainer.modelspec import ModelSpec
    from trainer.predict import ImageDetections, evaluate_detections
    from trainer_worker.loop import Progress, Recipe, train
    from trainer_worker.predict import predict

    known = {f.name for f in fields(Recipe)}
    overrides = {}
    for item in args.set:
        key, _, text = item.partition("=")
        if key not in known:
            parser.error(f"--set {item}: Recipe has no field {key!r}; it has {', '.join(sorted(known))}")
        overrides[key] = _value(text)
    classes = args.classes.split(",")
    # Classes that are not targets stay don't-care, as in the scored protocol.
    data = load_folder(args.data, classes, [c for c in DONT_CARE if c not in classes])
    # --set wins, so a step-scheduled variant can be asked for: --set epochs=10 --set time_budget_s=null.
    recipe = replace(Recipe(), **{"time_budget_s": args.budget_s, "epochs": 100_000, "loader_threads": 1, **overrides})
    width, _, height = args.size.partition("x")
    spec = ModelSpec("n", tuple(data.class_names), int(width), int(height))
    started = time.monotonic()

    def on_progress(p: Progress) -> None:
        if p.epoch_metrics is not None:
            m = p.epoch_metrics
            print(
                f"{args.name}: {time.monotonic() - started:5.0f}s epoch {p.epoch + 1} step {p.step} "
                f"loss {m.get('loss', 0.0):.3f} {m.get('images_per_s', 0.0):.2f} img/s",
                flush=True,
            )

    with tempfile.TemporaryDirectory(prefix="bench-recipe-") as ckpt:
        result = train(spec, recipe, data, None, Path(ckpt), on_progress, lambda: False, evaluate_every_epochs=0)
    if args.save is not None:
        result.body.save_weights(str(args.save))
    scored = load_folder(args.data, ["car"], DONT_CARE)
    car = list(data.class_names).index("car")
    found = []
    for d in predict(result.body, spec, [im.path for im in scored.val]):
        keep = d.classes == car
        found.append(ImageDetections(d.path, d.boxes[keep], d.scores[keep], np.zeros(int(keep.sum()), np.int32)))
    every, tall = evaluate_detections(found, scored.val, 1), evaluate_detections(found, scored.val, 1, 40.0)
    steps = int(result.history[-1]["steps"]) if result.history else 0
    print(
        f"RESULT {args.name}: steps {steps}, car AP50 {every.map50:.3f} (AP50-95 {every.map50_95:.3f}), "
        f">= 40 px AP50 {tall.map50:.3f}; {args.size} {' '.join(args.set) or 'defaults'}",
        flush=True,
    )
    # The by-height columns of docs/training.md (source pixels, as bench.accuracy --min-heights).
    heights = [f">= {h:.0f} px {evaluate_detections(found, scored.val, 1, h).map50:.3f}" for h in (80.0, 160.0, 320.0)]
    print(f"HEIGHTS {args.name}: car AP50 {', '.join(heights)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
