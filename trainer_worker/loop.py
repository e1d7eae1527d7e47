"""The distributed custom training loop (``strategy.run`` + GradientTape; Keras 3 ``fit`` is broken under
MultiWorkerMirroredStrategy, keras-team/keras#20585).

Each worker feeds its own shard of augmented crops to its one local replica; gradients are all-reduced
by the Keras optimizer, the loss is divided by ``num_replicas_in_sync`` so the result is the mean over
workers. An EMA of all weights (BatchNorm statistics included) is kept per replica: every replica
holds identical weights, so the EMAs stay identical without communication. Checkpoints (model,
optimizer, EMA, epoch and step counters) are written every epoch and when stopped; non-chief workers
write to a throw-away directory (the standard MWMS pattern) and everyone resumes from the chief's.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from trainer.data import TrainingData
from trainer.modelspec import ModelSpec
from trainer_worker.augment import AugmentConfig, Batch, BatchIterator, frame_scale
from trainer_worker.model import build_body, build_loss, load_ultralytics_checkpoint
from trainer_worker.predict import evaluate_on


@dataclass(frozen=True)
class Recipe:
    """How to train. The defaults are the best recipe measured on apollo-cars (2 CPU cores, yolov8n, single
    class "car", van/truck/bus ignored, export 960x544; docs/training-lab-notes.md §2 has the measurements)."""

    epochs: int = 100  # the most epochs; with time_budget_s training usually ends sooner
    # Wall seconds from the first step (chief's clock), validation included: the cosine ends on time.
    time_budget_s: float | None = 1710.0
    # Per worker. Batch 2 makes 1.7x the updates but its 28-minute job scored no better (lab notes §4).
    batch_size: int = 4
    samples_per_epoch: int = 392  # crops per epoch over all workers (the data sets are small: 4 x 98 frames)
    learning_rate: float = 2e-3
    final_lr_fraction: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 5e-4
    clip_norm: float = 10.0
    # Wide crops (cars sit in a band of the frame); 640x320 over 512x256: +0.04-0.08 AP50 >= 40 px (lab notes §6).
    crop_width: int = 640
    crop_height: int = 320
    # None: 4/3 of the export's scale, so at the zoom's geometric mean (0.78) crops show cars at the served size.
    image_scale: float | None = None
    zoom_min: float = 0.45  # with image_scale 2/3: 0.3..0.9 of the source, so large cars fit a crop too
    zoom_max: float = 1.35
    object_bias: float = 0.85
    flip_p: float = 0.5
    hsv_h: float = 0.015
    hsv_s: float = 0.6
    hsv_v: float = 0.35
    paint_ignore: bool = True
    # Half the samples are 2x2 mosaics: +0.04 car AP50 (+0.06 >= 40 px) at the same budget (lab notes §7).
    mosaic_p: float = 0.5
    # The schedule's last fraction trains on plain crops, like served frames: +0.02 / +0.04 (lab notes §7).
    # Decided at epoch starts from the chief's schedule progress.
    close_mosaic: float = 0.15
    mosaic_zoom: float = 1.0  # quadrants zoomed out by this, so a quarter of the crop can still hold a large car
    # Zoom out until a too-large car fits whole, with this probability; off: -0.025 AP50 (lab notes §4, §11).
    fit_p: float = 0.0
    fit_fraction: float = 0.9
    target_size_power: float = 0.0  # crops centre on cars drawn with weights height ** this (0: uniform)
    # A target cut by the crop to less than this fraction of its area is dropped (and painted grey).
    min_visible: float = 0.4
    max_boxes: int = 32  # the target padding; the assigner's cost grows with it (apollo: <= 20 cars a frame)
    # Ultralytics' EMA, decay * (1 - exp(-updates / ramp)); 0.999 / 200 scored below raw weights (lab notes §9).
    ema_decay: float = 0.9999
    ema_ramp_steps: float = 2000.0
    box_gain: float = 7.5
    # Ultralytics uses 0.5; 1.0 gave +0.05 AP50, 2.0 a further +0.01 on cars >= 40 px (lab notes §5, §7).
    cls_gain: float = 2.0
    dfl_gain: float = 1.5
    seed: int = 0
    loader_threads: int = 2

    def augment_config(self, frame_scale: float) -> AugmentConfig:
        """The sample pipeline's settings; ``frame_scale`` is the export's scale of the training frames
        (:func:`trainer_worker.augment.frame_scale`)."""
        return AugmentConfig(
            crop_w=self.crop_width,
            crop_h=self.crop_height,
            image_scale=self.image_scale if self.image_scale is not None else frame_scale * 4 / 3,
            zoom_min=self.zoom_min,
            zoom_max=self.zoom_max,
            object_bias=self.object_bias,
            flip_p=self.flip_p,
            hsv_h=self.hsv_h,
            hsv_s=self.hsv_s,
            hsv_v=self.hsv_v,
            min_visible=self.min_visible,
            max_boxes=self.max_boxes,
            paint_ignore=self.paint_ignore,
            mosaic_p=self.mosaic_p,
            mosaic_zoom=self.mosaic_zoom,
            fit_p=self.fit_p,
            fit_fraction=self.fit_fraction,
            target_size_power=self.target_size_power,
        )


@dataclass
class Progress:
    epoch: int  # 0-based epoch being trained
    step: int  # global step (optimizer updates so far)
    total_steps: int
    metrics: dict[str, float] = field(default_factory=dict)  # loss, box, cls, dfl, lr, images_per_s
    epoch_metrics: dict[str, float] | None = None  # at epoch ends; incl. val_map50 / val_map50_95 when evaluated
    schedule_progress: float = 0.0  # 0..1: what the learning-rate schedule has done (steps or time budget)
    stopped_mid_epoch: bool = False  # the last report of a job stopped before its epoch's end (not throttled)


@dataclass
class TrainResult:
    body: Any  # keras body holding the final EMA weights (not distributed; ready to export)
    history: list[dict[str, float]]
    epochs_completed: int
    stopped: bool


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the worker that owns checkpoints and results (the only process when not multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def worker_shard(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """(worker index, number of workers) for sharding the data; one replica per worker on CPU."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 0, 1
    spec = resolver.cluster_spec().as_dict()
    chiefs = len(spec.get("chief", []))
    workers = len(spec.get("worker", []))
    index = 0 if resolver.task_type == "chief" else chiefs + int(resolver.task_id)
    return index, chiefs + workers


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup over steps, then a cosine over ``progress`` (0..1, a variable the loop sets from steps
    done or, with a time budget, from the training time spent, whichever is further)."""

    def __init__(self, peak: float, warmup_steps: int, final_fraction: float, progress: Any) -> None:
        self.peak = peak
        self.warmup_steps = max(1, warmup_steps)
        self.final_fraction = final_fraction
        self.progress = progress

    def value(self, step: float, progress: float) -> float:
        if step < self.warmup_steps:
            return self.peak * (step + 1.0) / self.warmup_steps
        floor = self.peak * self.final_fraction
        return floor + (self.peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))

    def __call__(self, step: Any) -> Any:
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / float(self.warmup_steps)
        progress = tf.clip_by_value(tf.cast(self.progress, tf.float32), 0.0, 1.0)
        floor = self.peak * self.final_fraction
        cosine = floor + (self.peak - floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warm, cosine)

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "final_fraction": self.final_fraction}


def _checkpoint_dir_for(checkpoint_dir: Path, chief: bool) -> Path:
    if chief:
        return checkpoint_dir
    return Path(tempfile.mkdtemp(prefix="carmesh-worker-ckpt-"))


def _assign_weights(target: Any, values: list[np.ndarray]) -> None:
    for variable, value in zip(target.weights, values, strict=True):
        variable.assign(value)


def train(
    spec: ModelSpec,
    recipe: Recipe,
    data: TrainingData,
    strategy: tf.distribute.Strategy | None,
    checkpoint_dir: Path,
    on_progress: Callable[[Progress], None],
    should_stop: Callable[[], bool],
    init_checkpoint: Path | None = None,
    evaluate_every_epochs: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> TrainResult:
    """Trains ``spec`` on ``data.train`` (validating on ``data.val`` every ``evaluate_every_epochs`` epochs and
    at the end, on the chief; 0 = only at the end); resumes from the last checkpoint in ``checkpoint_dir``."""
    strategy = strategy or tf.distribute.get_strategy()
    chief = is_chief(strategy)
    worker_index, num_workers = worker_shard(strategy)
    replicas = strategy.num_replicas_in_sync
    batches = BatchIterator(
        data.train,
        recipe.augment_config(frame_scale(data.train, (spec.input_width, spec.input_height))),
        recipe.batch_size,
        seed=recipe.seed,
        worker_index=worker_index,
        num_workers=num_workers,
        samples_per_epoch=recipe.samples_per_epoch,
        threads=recipe.loader_threads,
    )
    steps_per_epoch = batches.steps_per_epoch
    total_steps = steps_per_epoch * recipe.epochs
    loss_fn = build_loss(spec, recipe.box_gain, recipe.cls_gain, recipe.dfl_gain)
    keras.utils.set_random_seed(recipe.seed)  # identical initial weights on every worker

    with strategy.scope():
        body = build_body(spec)
        body(np.zeros((1, recipe.crop_height, recipe.crop_width, 3), np.float32), training=False)
        if init_checkpoint is not None:
            load_ultralytics_checkpoint(body, init_checkpoint)
        # Schedule progress and training seconds are the chief's, handed to every worker through the step.
        progress_var = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="schedule_progress")
        train_s_var = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="train_seconds")
        schedule = WarmupCosine(recipe.learning_rate, recipe.warmup_steps, recipe.final_lr_fraction, progress_var)
        optimizer = keras.optimizers.AdamW(
            learning_rate=schedule,
            weight_decay=recipe.weight_decay,
            beta_1=0.9,
            beta_2=0.999,
            global_clipnorm=recipe.clip_norm,
        )
        # Decay only conv kernels, not BatchNorm scales/offsets or biases (Ultralytics does the same).
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
        optimizer.build(body.trainable_variables)
        ema = [
            tf.Variable(
                w.value if hasattr(w, "value") else w,
                trainable=False,
                name=f"ema_{i}",
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            for i, w in enumerate(body.weights)
        ]
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        step_in_epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        ema_updates = tf.Variable(
            0.0,
            dtype=tf.float32,
            trainable=False,
            name="ema_updates",
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    checkpoint = tf.train.Checkpoint(
        body=body,
        optimizer=optimizer,
        ema=ema,
        epoch=epoch_var,
        step_in_epoch=step_in_epoch_var,
        ema_updates=ema_updates,
        schedule_progress=progress_var,
        train_seconds=train_s_var,
    )
    checkpoint_dir = Path(checkpoint_dir)
    write_dir = _checkpoint_dir_for(checkpoint_dir, chief)
    manager = tf.train.CheckpointManager(checkpoint, str(write_dir), max_to_keep=2)
    latest = tf.train.latest_checkpoint(str(checkpoint_dir))
    if latest:
        checkpoint.restore(latest).expect_partial()

    body_weights = list(body.weights)
    trainable = list(body.trainable_variables)

    def replica_step(images: Any, boxes: Any, labels: Any, mask: Any, stop: Any, progress: Any) -> dict[str, Any]:
        with tf.GradientTape() as tape:
            feats = body(images, training=True)
            losses = loss_fn(feats, {"boxes": boxes, "labels": labels, "mask": mask})
            scaled = losses["loss"] / replicas
        grads = tape.gradient(scaled, trainable)
        optimizer.apply_gradients(zip(grads, trainable, strict=True))
        ema_updates.assign_add(1.0)
        decay = recipe.ema_decay * (1.0 - tf.exp(-ema_updates / recipe.ema_ramp_steps))
        for e, w in zip(ema, body_weights, strict=True):
            e.assign(decay * e + (1.0 - decay) * tf.cast(w.value if hasattr(w, "value") else w, e.dtype))
        out = {k: v / replicas for k, v in losses.items()}
        out["stop"] = stop
        out["progress"] = progress
        return out

    @tf.function
    def train_step(images: Any, boxes: Any, labels: Any, mask: Any, stop: Any, progress: Any) -> dict[str, Any]:
        # stop and progress come back summed over workers: any worker may stop, only the chief sends progress.
        per_replica = strategy.run(replica_step, args=(images, boxes, labels, mask, stop, progress))
        reduced = {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}
        return reduced

    # BatchNorm moving statistics update from each worker's own batch, so they drift apart; averaging them
    # (and their EMAs) before every checkpoint keeps all workers' checkpoints and results identical.
    sync_vars = [w.value if hasattr(w, "value") else w for w in body.non_trainable_weights] + ema

    @tf.function
    def sync_state() -> None:
        def fn() -> None:
            ctx = tf.distribute.get_replica_context()
            values = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v) for v in sync_vars])
            for variable, value in zip(sync_vars, values, strict=True):
                variable.assign(value)

        strategy.run(fn)

    def save(number: int) -> None:
        if num_workers > 1:
            sync_state()
        manager.save(checkpoint_number=number)

    eval_body: Any = None

    def ema_body() -> Any:
        nonlocal eval_body
        if eval_body is None:
            eval_body = build_body(spec)
            eval_body(np.zeros((1, spec.input_height, spec.input_width, 3), np.float32), training=False)
        _assign_weights(eval_body, [np.asarray(e.read_value()) for e in ema])
        return eval_body

    history: list[dict[str, float]] = []
    stopped = False
    epoch = int(epoch_var.numpy())
    start_step = int(step_in_epoch_var.numpy())
    global_step = epoch * steps_per_epoch + start_step
    global_batch = recipe.batch_size * num_workers
    train_s = float(train_s_var.numpy())
    # The time budget is wall time from the first step on, checkpoints and mid-job validation included,
    # so a time-limited job's schedule ends at its deadline, not after it.
    last_mark = clock()
    decay_steps = max(1, total_steps - recipe.warmup_steps)
    budget_done = float(progress_var.numpy()) >= 1.0 and recipe.time_budget_s is not None
    while epoch < recipe.epochs and not stopped and not budget_done:
        sums: dict[str, float] = {}
        epoch_started = clock()
        step_started = epoch_started
        n_steps = 0
        step = start_step - 1
        mosaic = float(progress_var.numpy()) < 1.0 - recipe.close_mosaic
        for batch in batches.epoch(epoch, start_step, mosaic):
            step += 1
            lr = schedule.value(global_step, float(progress_var.numpy()))
            progress = (global_step + 1 - recipe.warmup_steps) / decay_steps
            if recipe.time_budget_s:
                progress = max(progress, train_s / recipe.time_budget_s)
            out = _run_step(train_step, batch, should_stop(), progress if chief else 0.0)
            progress_var.assign(float(out["progress"]))
            global_step += 1
            n_steps += 1
            now = clock()
            train_s, last_mark = train_s + now - last_mark, now
            metrics = {k: float(v) for k, v in out.items() if k not in ("stop", "progress")}
            metrics["lr"] = lr
            metrics["images_per_s"] = global_batch / max(now - step_started, 1e-9)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            on_progress(Progress(epoch, global_step, total_steps, metrics, schedule_progress=float(out["progress"])))
            budget_done = recipe.time_budget_s is not None and float(out["progress"]) >= 1.0
            if float(out["stop"]) > 0:
                stopped = True
                break
            if budget_done:
                break
            step_started = clock()
        now = clock()
        train_s, last_mark = train_s + now - last_mark, now
        train_s_var.assign(train_s)
        if stopped and step + 1 < steps_per_epoch:
            step_in_epoch_var.assign(step + 1)
            save(global_step)
            on_progress(
                Progress(
                    epoch,
                    global_step,
                    total_steps,
                    schedule_progress=float(progress_var.numpy()),
                    stopped_mid_epoch=True,
                )
            )
            break
        epoch += 1
        epoch_var.assign(epoch)
        step_in_epoch_var.assign(0)
        start_step = 0
        save(global_step)
        epoch_metrics = {k: v / max(n_steps, 1) for k, v in sums.items()}
        epoch_metrics["epoch"] = float(epoch)
        epoch_metrics["epoch_s"] = clock() - epoch_started
        epoch_metrics["steps_per_s"] = n_steps / max(epoch_metrics["epoch_s"], 1e-9)
        epoch_metrics["train_s"] = train_s
        epoch_metrics["steps"] = float(global_step)
        last = epoch == recipe.epochs or budget_done
        due = evaluate_every_epochs > 0 and epoch % evaluate_every_epochs == 0
        if chief and data.val and (last or due):
            report = evaluate_on(ema_body(), spec, data.val)
            epoch_metrics["val_map50"] = _finite(report.map50)
            epoch_metrics["val_map50_95"] = _finite(report.map50_95)
        history.append(epoch_metrics)
        on_progress(
            Progress(
                epoch - 1,
                global_step,
                total_steps,
                dict(epoch_metrics),
                epoch_metrics,
                schedule_progress=float(progress_var.numpy()),
            )
        )
    if not chief:
        shutil.rmtree(write_dir, ignore_errors=True)
    return TrainResult(body=ema_body(), history=history, epochs_completed=epoch, stopped=stopped)


def _finite(value: float) -> float:
    return float(value) if np.isfinite(value) else 0.0


def _run_step(train_step: Any, batch: Batch, stop: bool, progress: float) -> dict[str, Any]:
    result: dict[str, Any] = train_step(
        tf.constant(batch.images),
        tf.constant(batch.boxes),
        tf.constant(batch.labels),
        tf.constant(batch.mask),
        tf.constant(1.0 if stop else 0.0),
        tf.constant(progress, tf.float32),
    )
    return result
