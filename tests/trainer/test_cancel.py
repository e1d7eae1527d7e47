"""Cancelling a training job in each of its phases: the job ends CANCELLED, its worker processes
(or its download) are gone, and no model version is registered.

The trainer runs as a separate process with the phase hold test hook (``trainer.phases.PhaseHold``):
every job has a model name of its own, and the hold file names the phase where that job waits
until it is cancelled, so each test cancels in a known phase without guessing times. Training is
the exception: that job really trains, and is cancelled between steps. The jobs that must train
before their phase (evaluating, exporting, registering) all start when the module's trainer does,
so their start-up and training overlap instead of adding up. The download runs against a real
feature_service serving a real snapshot; the hold stops it after its first frame.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from carmesh.v1 import common_pb2, feature_pb2, feature_pb2_grpc, training_pb2, training_pb2_grpc
from kit.kafka import ensure_topics
from tests.feature_service.support import daemon_args, fetchval, fresh_database, produce_frames
from tests.helpers import DaemonProcess, free_port
from tests.support import eventually
from trainer.phases import HOLD_ENV, JobPhase
from trainer.synthetic import write_dataset

pytestmark = pytest.mark.timeout(600)

SNAPSHOT_FRAMES = 6
# Phases a worker reports; the job must train before the last three.
WORKER_PHASES = (
    JobPhase.LOADING_DATA,
    JobPhase.TRAINING,
    JobPhase.EVALUATING,
    JobPhase.EXPORTING,
    JobPhase.REGISTERING,
)


def model_name(phase: JobPhase) -> str:
    return f"cancel-{phase.name.lower()}-{os.getpid()}"


@dataclass
class Stack:
    daemon: DaemonProcess
    work_dir: Path
    data: Path
    snapshot: str
    mlflow_uri: str
    jobs: dict[JobPhase, str]  # the jobs started with the trainer, by the phase they are cancelled in

    def stub(self, channel: grpc.Channel) -> training_pb2_grpc.TrainingServiceStub:
        return training_pb2_grpc.TrainingServiceStub(channel)

    def job(self, job_id: str) -> training_pb2.TrainingJob:
        with grpc.insecure_channel(self.daemon.address) as channel:
            return self.stub(channel).GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=job_id), timeout=10).job

    def state(self, job_id: str) -> dict[str, object]:
        return dict(json.loads((self.work_dir / "jobs" / job_id / "state.json").read_text()))

    def logs(self, job_id: str) -> str:
        return "\n".join(p.read_text()[-2000:] for p in (self.work_dir / "jobs" / job_id).glob("worker-*.log"))


def request(dataset: str, phase: JobPhase) -> training_pb2.StartTrainingRequest:
    """A job small enough that training, evaluation and export take seconds (one 64x64 step)."""
    return training_pb2.StartTrainingRequest(
        dataset=dataset,
        config=training_pb2.TrainingConfig(
            preset="n",
            input_width=64,
            input_height=64,
            epochs=1000 if phase == JobPhase.TRAINING else 1,
            batch_size=2,
            crop_width=64,
            crop_height=64,
            classes=["car"],
            ignore_classes=["van"],
        ),
        model_name=model_name(phase),
    )


def wait_for(check: Callable[[], bool], timeout_s: float, what: Callable[[], str]) -> None:
    """Waits until ``check()`` holds; ``what()`` (the job's state) goes into a timeout's message."""
    eventually(check, what="the job's condition", timeout_s=timeout_s, detail=what)


def _frame(dataset: str, index: int, split: int) -> common_pb2.Frame:
    image = np.full((96, 160, 3), 90, np.uint8)
    cv2.rectangle(image, (40, 40), (100, 80), (20, 20, 200), -1)
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    return common_pb2.Frame(
        frame_id=f"{dataset}-{index}",
        camera_id=f"cam-{dataset}",
        seq=index,
        captured_at=Timestamp(seconds=int((datetime(2026, 11, 1, tzinfo=UTC) + timedelta(seconds=index)).timestamp())),
        encoding=common_pb2.IMAGE_ENCODING_JPEG,
        image=jpeg.tobytes(),
        annotations=[common_pb2.Annotation(box=common_pb2.BoundingBox(x1=40, y1=40, x2=100, y2=80), class_name="car")],
        dataset=dataset,
        split=split,
    )


def _stored_frames(dsn: str, dataset: str) -> Callable[[], object]:
    return lambda: asyncio.run(fetchval(dsn, "select count(*) from frames where dataset = $1", dataset))


@pytest.fixture(scope="module")
def snapshot(
    postgres_dsn: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(feature_service address, snapshot name): a real feature_service holding a small snapshot."""
    dataset = f"cancel-{os.getpid()}"
    databases = fresh_database(postgres_dsn, "cancel")
    db = next(databases)
    try:
        asyncio.run(ensure_topics(kafka_bootstrap))
        args = daemon_args(
            dsn=db.dsn,
            redis_url=redis_url,
            kafka_bootstrap=kafka_bootstrap,
            blob_dir=tmp_path_factory.mktemp("blobs"),
        )
        with DaemonProcess("feature_service", args) as features:
            splits = [common_pb2.SPLIT_TRAIN] * (SNAPSHOT_FRAMES - 2) + [common_pb2.SPLIT_VAL] * 2
            frames = [_frame(dataset, i, split) for i, split in enumerate(splits)]
            asyncio.run(produce_frames(kafka_bootstrap, frames))
            stored = _stored_frames(db.dsn, dataset)
            wait_for(lambda: stored() == SNAPSHOT_FRAMES, 120, lambda: f"feature_service stored {stored()} frames")
            with grpc.insecure_channel(features.address) as channel:
                feature_pb2_grpc.FeatureServiceStub(channel).CreateDatasetSnapshot(
                    feature_pb2.CreateDatasetSnapshotRequest(
                        name=dataset, filter=feature_pb2.DatasetFilter(datasets=[dataset]), keep_source_split=True
                    ),
                    timeout=60,
                )
            yield features.address, dataset
    finally:
        databases.close()  # drops the database


@pytest.fixture(scope="module")
def stack(mlflow_uri: str, snapshot: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    feature_addr, snapshot_name = snapshot
    root = tmp_path_factory.mktemp("cancel")
    data = write_dataset(root / "synthetic", train_images=2, val_images=1, width=160, height=96, seed=3)
    hold = root / "hold.json"
    holds = {model_name(p): p.value for p in JobPhase if p not in (JobPhase.TRAINING, JobPhase.CANCELLED)}
    hold.write_text(json.dumps(holds))
    args = [
        "--work-dir",
        str(root / "work"),
        "--registry-addr",
        f"127.0.0.1:{free_port()}",  # reached only after a registration, which must not happen
        "--feature-addr",
        feature_addr,
        "--mlflow-tracking-uri",
        mlflow_uri,
        "--metrics-port",
        "0",
        "--max-running-jobs",
        "16",
        "--stop-grace-s",
        "10",
        "--allowed-roots",  # the jobs train on the folder written under root
        str(root),
    ]
    with DaemonProcess("trainer", args, env={HOLD_ENV: str(hold)}, timeout_s=60) as daemon:
        stack = Stack(daemon, root / "work", data, snapshot_name, mlflow_uri, {})
        with grpc.insecure_channel(daemon.address) as channel:
            for phase in WORKER_PHASES:
                reply = stack.stub(channel).StartTraining(request(str(data), phase), timeout=30)
                stack.jobs[phase] = reply.job.job_id
        yield stack


def _worker_pids(job_id: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"trainer_worker --job-dir .*{job_id}"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def _registered_versions(stack: Stack, phase: JobPhase) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
    return [mv.version for mv in client.search_model_versions(f"name='{model_name(phase)}'")]


def cancel_and_check(stack: Stack, job_id: str, phase: JobPhase) -> training_pb2.TrainingJob:
    with grpc.insecure_channel(stack.daemon.address) as channel:
        stub = stack.stub(channel)
        before = stub.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=job_id), timeout=10).job
        assert before.phase == phase.value, before
        cancelled = stub.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(job_id=job_id), timeout=60).job
    # The cancel returns once the job has ended.
    assert cancelled.state == training_pb2.TRAINING_STATE_CANCELLED, (cancelled, stack.logs(job_id))
    assert cancelled.phase == JobPhase.CANCELLED.value and not cancelled.registered.version
    assert not _worker_pids(job_id), "worker processes outlived the cancel"
    assert _registered_versions(stack, phase) == []
    assert (stack.work_dir / "jobs" / job_id / "cancel").exists()
    assert not (stack.work_dir / "jobs" / job_id / "result.json").exists()
    return cancelled


def test_cancel_while_pending(stack: Stack) -> None:
    with grpc.insecure_channel(stack.daemon.address) as channel:
        job = stack.stub(channel).StartTraining(request(str(stack.data), JobPhase.PENDING), timeout=30).job
    assert job.state == training_pb2.TRAINING_STATE_PENDING and job.phase == JobPhase.PENDING.value
    cancel_and_check(stack, job.job_id, JobPhase.PENDING)
    assert not (stack.work_dir / "jobs" / job.job_id / "job.json").exists(), "the job got as far as its spec"


def test_cancel_while_fetching_the_data_set(stack: Stack) -> None:
    with grpc.insecure_channel(stack.daemon.address) as channel:
        job = stack.stub(channel).StartTraining(request(stack.snapshot, JobPhase.FETCHING_DATASET), timeout=30).job
    # Held after the first frame it wrote: the download is under way, its stream open.
    wait_for(lambda: stack.state(job.job_id)["fetched_frames"] == 1, 60, lambda: str(stack.state(job.job_id)))
    assert stack.state(job.job_id)["total_frames"] == SNAPSHOT_FRAMES
    cancel_and_check(stack, job.job_id, JobPhase.FETCHING_DATASET)
    cache = stack.work_dir / "datasets"
    assert list(cache.iterdir()) == [], "the cancelled download left files in the cache"


def test_cancel_while_starting_workers(stack: Stack) -> None:
    with grpc.insecure_channel(stack.daemon.address) as channel:
        job = stack.stub(channel).StartTraining(request(str(stack.data), JobPhase.STARTING_WORKERS), timeout=30).job
    wait_for(
        lambda: stack.job(job.job_id).phase == JobPhase.STARTING_WORKERS.value, 60, lambda: str(stack.job(job.job_id))
    )
    cancel_and_check(stack, job.job_id, JobPhase.STARTING_WORKERS)
    assert not list((stack.work_dir / "jobs" / job.job_id).glob("worker-*.log")), "workers started after the cancel"


@pytest.mark.parametrize("phase", WORKER_PHASES, ids=[p.name.lower() for p in WORKER_PHASES])
def test_cancel_in_a_worker_phase(stack: Stack, phase: JobPhase) -> None:
    job_id = stack.jobs[phase]
    if phase == JobPhase.TRAINING:
        # Really training: cancelled between steps.
        reached = lambda: stack.job(job_id).step > 0  # noqa: E731
    else:
        reached = lambda: stack.job(job_id).phase == phase.value  # noqa: E731
    wait_for(
        lambda: reached() or stack.job(job_id).state != training_pb2.TRAINING_STATE_RUNNING,
        400,
        lambda: stack.logs(job_id),
    )
    pids = [int(p) for p in stack.state(job_id)["worker_pids"]]  # type: ignore[attr-defined]
    assert pids and sorted(_worker_pids(job_id)) == sorted(pids), (pids, stack.logs(job_id))
    cancel_and_check(stack, job_id, phase)
    again = stack.job(job_id)
    assert again.state == training_pb2.TRAINING_STATE_CANCELLED


def test_a_cancelled_job_cannot_be_cancelled_again(stack: Stack) -> None:
    with grpc.insecure_channel(stack.daemon.address) as channel:
        stub = stack.stub(channel)
        job = stub.StartTraining(request(str(stack.data), JobPhase.PENDING), timeout=30).job
        stub.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(job_id=job.job_id), timeout=60)
        with pytest.raises(grpc.RpcError) as failure:
            stub.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(job_id=job.job_id), timeout=60)
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
