"""``make bench-train``: training steps/s of the trainer's real path against a raw loop.

- raw: the same model, loss, optimizer and step function on one batch held in memory (no
  decoding, augmentation or batching): the ceiling the input pipeline can reach;
- 1 worker: ``trainer_worker.loop.train`` with the real pipeline (JPEG decode, scale, crop, flip, HSV,
  padding) on apollo-cars train, single process;
- 2 workers: the same, as two processes on 127.0.0.1 under MultiWorkerMirroredStrategy
  (TF_CONFIG), each with half the cores; a step there processes twice the images.

Input pipeline overhead = 1 - (1 worker steps/s) / (raw steps/s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import free_port, write_section
from trainer_worker.runtime import prefer_onednn

SHARED = Path(__file__).resolve().parents[2] / "shared"
WARMUP_STEPS = 5


def _setup_threads(threads: int) -> None:
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))


def _recipe(steps: int, batch: int, workers: int) -> Any:
    from trainer_worker.loop import Recipe

    return Recipe(epochs=1, batch_size=batch, samples_per_epoch=steps * batch * workers, warmup_steps=10)


def run_pipeline(data_dir: Path, steps: int, batch: int, threads: int) -> dict[str, float]:
    """steps/s of trainer_worker.loop.train (this process is one worker; TF_CONFIG decides the cluster)."""
    _setup_threads(threads)
    import tensorflow as tf

    from trainer.data import load_folder
    from trainer.modelspec import ModelSpec
    from trainer_worker.loop import Progress, train

    data = load_folder(data_dir, classes=["car"], ignore_classes=["van", "truck", "bus"])
    workers = len(json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("worker", [])) or 1
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if workers > 1 else tf.distribute.get_strategy()
    stamps: list[float] = []

    def on_progress(p: Progress) -> None:
        if p.epoch_metrics is None:
            stamps.append(time.perf_counter())

    spec = ModelSpec("n", data.class_names, 960, 544)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as ckpt:
        train(
            spec,
            _recipe(steps, batch, workers),
            data,
            strategy,
            Path(ckpt),
            on_progress,
            lambda: False,
            evaluate_every_epochs=0,
        )
    timed = stamps[WARMUP_STEPS:]
    steps_per_s = (len(timed) - 1) / (timed[-1] - timed[0])
    return {"steps_per_s": steps_per_s, "images_per_s": steps_per_s * batch * workers, "steps": float(len(stamps))}


def run_raw(data_dir: Path, steps: int, batch: int, threads: int) -> dict[str, float]:
    """steps/s of the same step function on one in-memory batch."""
    _setup_threads(threads)
    import keras
    import numpy as np
    import tensorflow as tf

    from trainer.data import load_folder
    from trainer.modelspec import ModelSpec
    from trainer_worker.augment import BatchIterator, frame_scale
    from trainer_worker.loop import Recipe
    from trainer_worker.model import build_body, build_loss

    data = load_folder(data_dir, classes=["car"], ignore_classes=["van", "truck", "bus"])
    recipe = Recipe(batch_size=batch)
    spec = ModelSpec("n", data.class_names, 960, 544)
    cfg = recipe.augment_config(frame_scale(data.train, (spec.input_width, spec.input_height)))
    one = next(iter(BatchIterator(data.train, cfg, batch, seed=0, threads=1).epoch(0)))
    images, boxes, labels, mask = (tf.constant(x) for x in (one.images, one.boxes, one.labels, one.mask))
    keras.utils.set_random_seed(0)
    body = build_body(spec)
    loss_fn = build_loss(spec)
    optimizer = keras.optimizers.AdamW(
        learning_rate=1e-3, weight_decay=recipe.weight_decay, global_clipnorm=recipe.clip_norm
    )
    body(np.zeros((1, recipe.crop_height, recipe.crop_width, 3), np.float32))
    trainable = body.trainable_variables
    weights = [w.value for w in body.weights]  # the tf.Variables behind Keras 3's variables
    ema = [tf.Variable(tf.identity(w), trainable=False) for w in weights]

    @tf.function
    def step() -> Any:
        with tf.GradientTape() as tape:
            losses = loss_fn(body(images, training=True), {"boxes": boxes, "labels": labels, "mask": mask})
        optimizer.apply_gradients(zip(tape.gradient(losses["loss"], trainable), trainable, strict=True))
        for e, w in zip(ema, weights, strict=True):  # the EMA update the real step does too
            e.assign(0.999 * e + 0.001 * w)
        return losses["loss"]

    for _ in range(WARMUP_STEPS):
        step().numpy()
    started = time.perf_counter()
    for _ in range(steps - WARMUP_STEPS):
        step().numpy()
    steps_per_s = (steps - WARMUP_STEPS) / (time.perf_counter() - started)
    return {"steps_per_s": steps_per_s, "images_per_s": steps_per_s * batch, "steps": float(steps)}


def run_two_workers(data_dir: Path, steps: int, batch: int, cores: int) -> dict[str, float]:
    ports = [free_port(), free_port()]
    procs = []
    for index in range(2):
        env = dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL="2",
            TF_CONFIG=json.dumps(
                {
                    "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                    "task": {"type": "worker", "index": index},
                }
            ),
        )
        argv = [
            sys.executable,
            "-m",
            "bench.train",
            "--worker",
            "--data",
            str(data_dir),
            "--steps",
            str(steps),
            "--batch",
            str(batch),
            "--threads",
            str(max(1, cores // 2)),
        ]
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a worker failed: exit codes {[p.returncode for p in procs]}")
    result: dict[str, float] = json.loads(outputs[0].strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "apollo-cars")
    parser.add_argument("--steps", type=int, default=40, help="steps per measurement (the first 5 are warm-up)")
    parser.add_argument("--batch", type=int, default=8, help="images per step and worker")
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)
    if args.steps <= WARMUP_STEPS + 1:
        parser.error(f"--steps must be more than {WARMUP_STEPS + 1}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    prefer_onednn()  # as the trainer's workers do, for the raw loop and the workers alike
    if args.worker:
        print(json.dumps(run_pipeline(args.data, args.steps, args.batch, args.threads)), flush=True)
        return 0
    cores = os.cpu_count() or 1
    rows: list[tuple[str, dict[str, float]]] = []
    for label, fn in (("raw loop, in-memory batch", run_raw), ("1 worker, real input pipeline", run_pipeline)):
        # Each in its own process: TensorFlow's thread pools are fixed once it has run anything.
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import json, pathlib; from bench.train import {fn.__name__} as f; "
                f"print(json.dumps(f(pathlib.Path({str(args.data)!r}), {args.steps}, {args.batch}, {cores})))",
            ],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ),
        )
        rows.append((label, json.loads(out.stdout.strip().splitlines()[-1])))
        print(label, rows[-1][1], flush=True)
    rows.append(("2 workers (MWMS, 127.0.0.1)", run_two_workers(args.data, args.steps, args.batch, cores)))
    print(rows[-1][0], rows[-1][1], flush=True)
    raw = rows[0][1]["steps_per_s"]
    overhead = 1.0 - rows[1][1]["steps_per_s"] / raw
    from trainer_worker.loop import Recipe

    recipe = Recipe()
    table = "\n".join(
        f"| {label} | {r['steps_per_s']:.3f} | {r['images_per_s']:.2f} | {r['steps_per_s'] / raw:.2f}x |"
        for label, r in rows
    )
    body = (
        "## Training throughput\n\nCommand: `make bench-train`  \n"
        f"yolov8n (1 class), crops {recipe.crop_width}x{recipe.crop_height}, batch {args.batch} per worker, "
        f"{args.steps} steps per row (first {WARMUP_STEPS} not timed), {cores} cores, apollo-cars train.\n\n"
        "| path | steps/s | images/s | vs raw |\n|---|---:|---:|---:|\n"
        + table
        + f"\n\nInput pipeline overhead (1 worker vs raw): {overhead:.1%} (target <= 10%)."
    )
    print(body)
    if args.write:
        write_section(args.write, "bench-train", body)
        print(f"\nwritten to {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
