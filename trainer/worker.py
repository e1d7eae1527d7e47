"""One training worker process: ``python -m trainer.worker --job-dir DIR``.

The daemon starts N of these on 127.0.0.1 with ``TF_CONFIG`` (or Kubeflow's operator does on
a cluster, from the rendered TFJob). All workers train together under
``MultiWorkerMirroredStrategy``; only the chief (worker 0) logs to MLflow, evaluates, exports
and registers. A restarted worker resumes from the job's last checkpoint.

Exit codes: 0 done, 1 failed while training (the daemon restarts the job from its checkpoint),
3 cancelled, 4 failed in a way a restart cannot fix (bad data, export or registration errors).
The reason is the last ``error`` event and the log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from trainer.jobspec import ARTIFACT_DIR, CHECKPOINT_DIR, EVENTS_FILE, RESULT_FILE, EventLog, EventReader, JobSpec
from trainer.runtime import prefer_onednn

log = logging.getLogger("trainer.worker")

EXIT_CANCELLED = 3
EXIT_FINAL = 4
RUN_FILE = "mlflow_run.json"
# Progress events are throttled: the daemon polls the file; a line per step would only cost I/O.
_PROGRESS_EVERY_S = 1.0


def _cluster_size() -> tuple[int, int]:
    """(workers, this worker's index) from TF_CONFIG; (1, 0) without it."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return 1, 0
    cfg = json.loads(raw)
    cluster = cfg.get("cluster", {})
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    task = cfg.get("task", {})
    index = int(task.get("index", 0))
    # With an explicit chief (TFJob), workers are numbered after it.
    if task.get("type") == "worker" and cluster.get("chief"):
        index += 1
    return max(workers, 1), index


def _strategy(workers: int) -> Any:
    import tensorflow as tf

    if workers > 1:
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return tf.distribute.get_strategy()


class StopFlags:
    """SIGTERM means cancel (nothing is registered); the deadline means finish with what we have."""

    def __init__(self, deadline_unix: float) -> None:
        self.cancelled = threading.Event()
        self.deadline_unix = deadline_unix

    def install(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.cancelled.set())

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or (self.deadline_unix > 0 and time.time() >= self.deadline_unix)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.worker", description=__doc__)
    parser.add_argument("--job-dir", type=Path, required=True, help="folder with job.json (shared by all workers)")
    args = parser.parse_args(argv)
    prefer_onednn()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job_dir: Path = args.job_dir.resolve()
    spec = JobSpec.read(job_dir)
    workers, index = _cluster_size()
    chief = index == 0
    events = EventLog(job_dir / EVENTS_FILE) if chief else None
    flags = StopFlags(spec.deadline_unix)
    flags.install()
    try:
        return _run(spec, job_dir, workers, chief, events, flags)
    except FinalError as exc:
        log.exception("job failed")
        if events is not None:
            events.emit("error", message=str(exc))
        return EXIT_FINAL
    except Exception as exc:
        log.exception("training failed")
        if events is not None:
            events.emit("error", message=f"{type(exc).__name__}: {exc}")
        return 1


class FinalError(Exception):
    """Wraps a failure that would repeat on every restart."""


def _run(spec: JobSpec, job_dir: Path, workers: int, chief: bool, events: EventLog | None, flags: StopFlags) -> int:
    import tensorflow as tf

    if spec.threads_per_worker:
        tf.config.threading.set_intra_op_parallelism_threads(spec.threads_per_worker)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, spec.threads_per_worker)))
    from trainer.data import load_folder
    from trainer.loop import Progress, Recipe, train
    from trainer.model import ModelSpec

    def phase(name: str) -> None:
        if events is not None:
            events.emit("phase", phase=name)

    phase("loading data")
    try:
        data = load_folder(
            Path(spec.data_path),
            classes=spec.model.get("class_names") or None,
            ignore_classes=spec.ignore_classes,
            fmt=spec.data_format or None,
        )
        model_spec = ModelSpec.from_dict({**spec.model, "class_names": list(data.class_names)})
        recipe = _recipe(Recipe, spec.recipe)
    except ValueError as exc:
        raise FinalError(f"cannot train on {spec.dataset}: {exc}") from exc
    tracker = _start_tracking(spec, job_dir, model_spec, recipe, data) if chief else None
    if events is not None and tracker is not None:
        events.emit("run", mlflow_run_id=tracker.run_id)

    last_emit = [0.0]

    def on_progress(p: Progress) -> None:
        if events is None:
            return
        now = time.monotonic()
        if p.epoch_metrics:
            events.emit(
                "epoch",
                epoch=p.epoch,
                step=p.step,
                total_steps=p.total_steps,
                metrics=p.epoch_metrics,
                progress=p.schedule_progress,
            )
            if tracker is not None:
                tracker.log_metrics(p.epoch_metrics, step=p.epoch)
        elif p.stopped_mid_epoch or now - last_emit[0] >= _PROGRESS_EVERY_S:
            events.emit(
                "progress",
                epoch=p.epoch,
                step=p.step,
                total_steps=p.total_steps,
                metrics=p.metrics,
                progress=p.schedule_progress,
            )
        else:
            return
        last_emit[0] = now

    phase("training")
    strategy = _strategy(workers)
    result = train(
        model_spec,
        recipe,
        data,
        strategy,
        checkpoint_dir=job_dir / CHECKPOINT_DIR,
        on_progress=on_progress,
        should_stop=flags.should_stop,
        init_checkpoint=Path(spec.init_checkpoint) if spec.init_checkpoint else None,
    )
    if flags.cancelled.is_set():
        if tracker is not None:
            tracker.finish("KILLED")
        return EXIT_CANCELLED
    if not chief or tracker is None or events is None:
        return 0
    from trainer.publish import publish

    # A resumed job trained its first epochs in an earlier attempt: the curves need all of them.
    result.history = _history(job_dir / EVENTS_FILE) or result.history
    try:
        outcome = publish(spec, job_dir / ARTIFACT_DIR, model_spec, data, result, tracker, phase)
    except Exception as exc:
        tracker.finish("FAILED")
        raise FinalError(f"{type(exc).__name__}: {exc}") from exc
    (job_dir / RESULT_FILE).write_text(json.dumps(outcome, indent=2))
    events.emit("result", **outcome)
    tracker.finish()
    return 0


def _history(events_file: Path) -> list[dict[str, float]]:
    by_epoch: dict[int, dict[str, float]] = {}
    for event in EventReader(events_file).read_new():
        if event.get("type") == "epoch":
            by_epoch[int(event["epoch"])] = {k: float(v) for k, v in (event.get("metrics") or {}).items()}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _recipe(recipe_cls: Any, overrides: dict[str, Any]) -> Any:
    import dataclasses

    known = {f.name for f in dataclasses.fields(recipe_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown recipe settings {unknown}; known: {sorted(known)}")
    return recipe_cls(**overrides)


def _start_tracking(spec: JobSpec, job_dir: Path, model_spec: Any, recipe: Any, data: Any) -> Any:
    import dataclasses

    from kit.registry_tags import TAG_TRAIN_DATASET
    from trainer.augment import frame_scale
    from trainer.tracking import Tracker

    # The effective training scale, not "None", when the recipe derives it from the export size.
    size = (model_spec.input_width, model_spec.input_height)
    image_scale = recipe.augment_config(frame_scale(data.train, size)).image_scale
    tracker = Tracker(spec.mlflow_tracking_uri, spec.experiment)
    run_file = job_dir / RUN_FILE
    previous = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else ""
    params: dict[str, Any] = {
        "dataset": spec.dataset,
        "workers": spec.workers,
        "train_images": len(data.train),
        "val_images": len(data.val),
        "ignore_classes": ",".join(spec.ignore_classes),
        "init_checkpoint": spec.init_checkpoint or "none",
        "max_duration_s": spec.max_duration_s,
        **{f"model.{k}": v for k, v in model_spec.to_dict().items()},
        **{f"recipe.{k}": v for k, v in dataclasses.asdict(recipe).items()},
        "recipe.image_scale": round(image_scale, 4),
    }
    tracker.start(spec.job_id, params, {TAG_TRAIN_DATASET: spec.dataset}, run_id=previous)
    run_file.write_text(json.dumps({"run_id": tracker.run_id}))
    return tracker


if __name__ == "__main__":
    sys.exit(main())
