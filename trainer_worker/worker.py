"""One training worker process: ``python -m trainer_worker --job-dir DIR``.

The daemon starts N of these on 127.0.0.1 with ``TF_CONFIG`` (or Kubeflow's operator does on
a cluster, from the rendered TFJob). All workers train together under
``MultiWorkerMirroredStrategy``; only the chief (worker 0) logs to MLflow, evaluates, exports
and registers. A restarted worker resumes from the job's last checkpoint.

SIGTERM stops a worker: training stops after its current step (with a checkpoint), and each later
phase checks before it starts; the model is registered only under the job's commit lock while no
cancel is recorded (``trainer.jobspec``). Exit codes are ``trainer.phases.WorkerExit``; the reason
is the last ``error`` event and the log.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import tensorflow as tf

from kit import mlflow_auth
from kit.config import ConfigError
from kit.registry_tags import TAG_TRAIN_DATASET
from trainer.data import TrainingData, load_folder
from trainer.events import EpochEvent, ErrorEvent, EventLog, EventReader, PhaseEvent, ProgressEvent, RunEvent
from trainer.jobspec import (
    ARTIFACT_DIR,
    CHECKPOINT_DIR,
    EVENTS_FILE,
    RESULT_FILE,
    JobSpec,
    cancel_requested,
    commit_lock,
)
from trainer.modelspec import ModelSpec
from trainer.phases import JobPhase, PhaseHold, WorkerExit
from trainer.tracking import Tracker
from trainer_worker.augment import frame_scale
from trainer_worker.loop import Progress, Recipe, train
from trainer_worker.publish import prepare_release, register

log = logging.getLogger("trainer_worker")

RUN_FILE = "mlflow_run.json"
# Progress events are throttled: the daemon polls the file; a line per step would only cost I/O.
_PROGRESS_EVERY_S = 1.0
_HOLD_POLL_S = 0.1


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
    if workers > 1:
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return tf.distribute.get_strategy()


class Stopped(Exception):
    """SIGTERM arrived (a cancel, or the daemon stopping): the worker ends before the next phase."""


class FinalError(Exception):
    """Wraps a failure that would repeat on every restart."""


class StopFlags:
    """SIGTERM means stop (nothing is registered); the deadline means finish with what we have."""

    def __init__(self, deadline_unix: float) -> None:
        self.stopped = threading.Event()
        self.deadline_unix = deadline_unix

    def install(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stopped.set())

    def should_stop(self) -> bool:
        return self.stopped.is_set() or (self.deadline_unix > 0 and time.time() >= self.deadline_unix)


class Phases:
    """Enters the chief's phases: checks for SIGTERM first, reports the phase, and waits where the test
    hook (``trainer.phases.PhaseHold``) says so."""

    def __init__(self, spec: JobSpec, events: EventLog | None, flags: StopFlags, hold: PhaseHold) -> None:
        self._model_name = spec.model_name
        self._events = events
        self._flags = flags
        self._hold = hold

    def enter(self, phase: JobPhase) -> None:
        if self._flags.stopped.is_set():
            raise Stopped(phase)
        if self._events is not None:
            self._events.emit(PhaseEvent(phase))
        while self._hold.holds(self._model_name, phase):
            if self._flags.stopped.wait(_HOLD_POLL_S):
                raise Stopped(phase)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer_worker", description=__doc__)
    parser.add_argument("--job-dir", type=Path, required=True, help="folder with job.json (shared by all workers)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job_dir: Path = args.job_dir.resolve()
    spec = JobSpec.read(job_dir)
    workers, index = _cluster_size()
    chief = index == 0
    events = EventLog(job_dir / EVENTS_FILE) if chief else None
    flags = StopFlags(spec.deadline_unix)
    flags.install()
    phases = Phases(spec, events, flags, PhaseHold.from_env())
    try:
        return _run(spec, job_dir, workers, chief, events, flags, phases)
    except Stopped as exc:
        log.info("stopped by SIGTERM before %s", exc)
        return WorkerExit.STOPPED
    except FinalError as exc:
        log.exception("job failed")
        if events is not None:
            events.emit(ErrorEvent(str(exc)))
        return WorkerExit.FINAL
    except Exception as exc:
        log.exception("training failed")
        if events is not None:
            events.emit(ErrorEvent(f"{type(exc).__name__}: {exc}"))
        return WorkerExit.FAILED


def _run(
    spec: JobSpec,
    job_dir: Path,
    workers: int,
    chief: bool,
    events: EventLog | None,
    flags: StopFlags,
    phases: Phases,
) -> int:
    if spec.threads_per_worker:
        tf.config.threading.set_intra_op_parallelism_threads(spec.threads_per_worker)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, spec.threads_per_worker)))
    phases.enter(JobPhase.LOADING_DATA)
    try:
        data = load_folder(
            Path(spec.data_path),
            classes=spec.model.get("class_names") or None,
            ignore_classes=spec.ignore_classes,
            fmt=spec.data_format or None,
        )
        model_spec = ModelSpec.from_dict({**spec.model, "class_names": list(data.class_names)})
        recipe = _recipe(spec.recipe)
    except ValueError as exc:
        raise FinalError(f"cannot train on {spec.dataset}: {exc}") from exc
    tracker = _tracking(spec, job_dir, model_spec, recipe, data) if chief else None
    if events is not None and tracker is not None:
        events.emit(RunEvent(tracker.run_id))

    last_emit = [0.0]

    def on_progress(p: Progress) -> None:
        if events is None:
            return
        now = time.monotonic()
        if p.epoch_metrics:
            events.emit(EpochEvent(p.epoch, p.step, p.total_steps, p.schedule_progress, dict(p.epoch_metrics)))
            if tracker is not None:
                tracker.log_metrics(p.epoch_metrics, step=p.epoch)
        elif p.stopped_mid_epoch or now - last_emit[0] >= _PROGRESS_EVERY_S:
            events.emit(ProgressEvent(p.epoch, p.step, p.total_steps, p.schedule_progress, dict(p.metrics)))
        else:
            return
        last_emit[0] = now

    try:
        phases.enter(JobPhase.TRAINING)
        result = train(
            model_spec,
            recipe,
            data,
            _strategy(workers),
            checkpoint_dir=job_dir / CHECKPOINT_DIR,
            on_progress=on_progress,
            should_stop=flags.should_stop,
            init_checkpoint=Path(spec.init_checkpoint) if spec.init_checkpoint else None,
        )
        if flags.stopped.is_set():
            raise Stopped(JobPhase.EVALUATING)
        if not chief or tracker is None or events is None:
            return WorkerExit.OK
        # A resumed job trained its first epochs in an earlier attempt: the curves need all of them.
        result.history = _history(job_dir / EVENTS_FILE) or result.history
        try:
            release = prepare_release(spec, job_dir / ARTIFACT_DIR, model_spec, data, result, tracker, phases.enter)
            with commit_lock(job_dir):
                # The daemon records a cancel under this lock: past this check, no cancel is accepted.
                if cancel_requested(job_dir) or flags.stopped.is_set():
                    raise Stopped(JobPhase.REGISTERING)
                outcome = register(spec, release, tracker)
                (job_dir / RESULT_FILE).write_text(json.dumps(dataclasses.asdict(outcome), indent=2))
        except Stopped:
            raise
        except Exception as exc:
            tracker.finish("FAILED")
            raise FinalError(f"{type(exc).__name__}: {exc}") from exc
    except Stopped:
        if tracker is not None:
            tracker.finish("KILLED")
        raise
    events.emit(outcome)
    tracker.finish()
    return WorkerExit.OK


def _history(events_file: Path) -> list[dict[str, float]]:
    by_epoch: dict[int, dict[str, float]] = {}
    for event in EventReader(events_file).read_new():
        if isinstance(event, EpochEvent):
            by_epoch[event.epoch] = dict(event.metrics)
    return [by_epoch[e] for e in sorted(by_epoch)]


def _recipe(overrides: dict[str, Any]) -> Recipe:
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown recipe settings {unknown}; known: {sorted(known)}")
    return Recipe(**overrides)


def _tracking(spec: JobSpec, job_dir: Path, model_spec: ModelSpec, recipe: Recipe, data: TrainingData) -> Tracker:
    """The chief's MLflow run, logged in with the job's MLflow credentials (the file is read here, at each
    start, so a restart after a rotation uses the new password); refused credentials end the job."""
    password_file = Path(spec.mlflow_password_file) if spec.mlflow_password_file else None
    try:
        mlflow_auth.apply(mlflow_auth.credentials_env(spec.mlflow_username, password_file))
    except ConfigError as exc:
        raise FinalError(str(exc)) from exc
    try:
        return _start_tracking(spec, job_dir, model_spec, recipe, data)
    except Exception as exc:
        if mlflow_auth.refused(exc):
            raise FinalError(mlflow_auth.refused_hint(spec.mlflow_tracking_uri, spec.mlflow_username)) from exc
        raise


def _start_tracking(spec: JobSpec, job_dir: Path, model_spec: ModelSpec, recipe: Recipe, data: TrainingData) -> Tracker:
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
