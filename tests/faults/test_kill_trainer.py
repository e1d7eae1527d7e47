"""kill -9 of the trainer mid-job under load through the gateway (issue 19 point 5, the trainer's row).

Real MLflow, registry_gateway, trainer and gateway processes; a tiny job on a synthetic KITTI folder.
Through the gateway one client follows the job with WatchTrainingJob and another polls
GetTrainingJob and ListTrainingJobs, each on one channel for the whole run. The trainer is SIGKILLed
once the job finished an epoch and restarted on the same port.

The contract (docs/reliability.md, "Trainer"): the job is resumed from its last checkpoint by the
restarted trainer (the killed trainer's orphaned worker is stopped first) and ends SUCCEEDED, never
RUNNING forever; its epochs are reported once each; calls fail only with UNAVAILABLE while the
trainer is down; the watcher re-watches on its own channel; exactly one model version is registered
for the job, whole (its ONNX downloads through the registry and hashes to the recorded sha256); a job
started after the restart succeeds too."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from carmesh.v1 import registry_pb2, registry_pb2_grpc, training_pb2, training_pb2_grpc
from kit.clients import insecure_channel
from kit.registry_tags import TAG_JOB_ID
from tests.helpers import DaemonProcess, free_port
from tests.registry.support import gateway_args
from tests.support import eventually_async
from trainer.synthetic import write_dataset

# Minutes of training (three TensorFlow worker starts, 3 epochs of 196 steps): `make test-faults` runs it.
# The suite keeps the short versions: tests/faults/test_trainer_orphans.py (the orphan stopped outside a
# registration) and tests/trainer/test_service.py's SIGKILL resume.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.e2e,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        os.environ.get("CARMESH_FAULTS_TRAINER") != "1", reason="minutes of training: `make test-faults` runs it"
    ),
]

KEY = f"faults-{uuid.uuid4().hex}"
SUCCEEDED = training_pb2.TRAINING_STATE_SUCCEEDED
DONE = {SUCCEEDED, training_pb2.TRAINING_STATE_FAILED, training_pb2.TRAINING_STATE_CANCELLED}


def bearer() -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {KEY}"),)


def request(data: Path, model_name: str, epochs: int) -> training_pb2.StartTrainingRequest:
    """The cheapest job that checkpoints every epoch: 64x64 input, one worker, batch 2 (196 steps an epoch:
    the recipe's 392 crops; the request cannot make epochs shorter)."""
    return training_pb2.StartTrainingRequest(
        dataset=str(data),
        config=training_pb2.TrainingConfig(
            preset="n",
            input_width=64,
            input_height=64,
            epochs=epochs,
            batch_size=2,
            crop_width=64,
            crop_height=64,
            classes=["car"],
            ignore_classes=["van"],
        ),
        model_name=model_name,
    )


@dataclass
class TrainerLoad:
    """What the clients saw; ``phase`` is "up", "down" or "back" (set by the test around the kill)."""

    job_id: str
    phase: str = "up"
    polls: dict[str, Counter[str]] = field(default_factory=dict)
    watch_errors: Counter[str] = field(default_factory=Counter)
    watches: int = 0
    start_retries: int = 0  # StartTraining calls after the restart that met UNAVAILABLE
    watched_states: list[int] = field(default_factory=list)
    wrong_answers: list[str] = field(default_factory=list)

    def count(self, outcome: str) -> None:
        self.polls.setdefault(self.phase, Counter())[outcome] += 1


async def watch_client(address: str, load: TrainerLoad) -> training_pb2.TrainingJob:
    """Follows the job to its end, watching again (same channel) after a failed stream."""
    async with insecure_channel(address) as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        while True:
            load.watches += 1
            try:
                async for reply in stub.WatchTrainingJob(
                    training_pb2.WatchTrainingJobRequest(job_id=load.job_id), metadata=bearer(), timeout=300
                ):
                    load.watched_states.append(reply.job.state)
                    if reply.job.state in DONE:
                        return reply.job
            except grpc.aio.AioRpcError as exc:
                load.watch_errors[exc.code().name] += 1
                await asyncio.sleep(0.2)  # sleep is the test's pacing: a client retrying after an error
                continue
            load.wrong_answers.append("a watch ended before the job did")


async def poll_client(address: str, load: TrainerLoad, stop: asyncio.Event) -> None:
    """GetTrainingJob and ListTrainingJobs in turn; both must know the job and never report it ended
    before the watcher saw it end."""
    async with insecure_channel(address) as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        turn = 0
        while not stop.is_set():
            turn += 1
            try:
                if turn % 2:
                    job = (
                        await stub.GetTrainingJob(
                            training_pb2.GetTrainingJobRequest(job_id=load.job_id), metadata=bearer(), timeout=10
                        )
                    ).job
                else:
                    listed = await stub.ListTrainingJobs(
                        training_pb2.ListTrainingJobsRequest(), metadata=bearer(), timeout=10
                    )
                    jobs = [j for j in listed.jobs if j.job_id == load.job_id]
                    if len(jobs) != 1:
                        load.wrong_answers.append(f"ListTrainingJobs lists the job {len(jobs)} times")
                        continue
                    job = jobs[0]
                if job.state in (training_pb2.TRAINING_STATE_FAILED, training_pb2.TRAINING_STATE_CANCELLED):
                    load.wrong_answers.append(f"the job ended {job.state}: {job.error}")
            except grpc.aio.AioRpcError as exc:
                load.count(exc.code().name)
                await asyncio.sleep(0.05)  # sleep is the test's pacing: a client retrying after an error
                continue
            load.count("OK")
            await asyncio.sleep(0.05)  # sleep is the test's pacing: ~20 polls a second, not a busy loop


async def start_when_available(
    address: str, start: training_pb2.StartTrainingRequest, load: TrainerLoad
) -> training_pb2.StartTrainingResponse:
    async with insecure_channel(address) as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        deadline = time.monotonic() + 60
        while True:
            try:
                return await stub.StartTraining(start, metadata=bearer(), timeout=30)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                load.start_retries += 1
                await asyncio.sleep(0.2)  # sleep is the test's pacing: a client retrying after an error


def worker_pids(job_id: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"trainer_worker --job-dir .*{job_id}"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return ") Z " not in stat.read_text()  # a zombie has ended
    except OSError:
        return False


async def versions_of(address: str, model_name: str) -> list[tuple[registry_pb2.ModelVersion, bytes]]:
    """Every registered version of ``model_name`` with its ONNX, downloaded through the gateway."""
    out = []
    async with insecure_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        listed = await stub.ListModelVersions(
            registry_pb2.ListModelVersionsRequest(name=model_name), metadata=bearer(), timeout=30
        )
        for version in listed.versions:
            chunks = []
            async for part in stub.DownloadModel(
                registry_pb2.DownloadModelRequest(name=model_name, version=version.version),
                metadata=bearer(),
                timeout=60,
            ):
                if part.HasField("chunk"):
                    chunks.append(part.chunk)
            out.append((version, b"".join(chunks)))
    return out


async def test_trainer_sigkill_mid_job_resumes_the_job_and_registers_one_whole_version(
    mlflow_uri: str, tmp_path: Path
) -> None:
    model_name = f"kill-trainer-{uuid.uuid4().hex[:8]}"
    data = write_dataset(tmp_path / "synthetic", train_images=4, val_images=2, width=160, height=96, seed=5)
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY} faults *\n")
    trainer_args = ["--work-dir", str(tmp_path / "work"), "--mlflow-tracking-uri", mlflow_uri]
    trainer_args += ["--feature-addr", f"127.0.0.1:{free_port()}", "--max-running-jobs", "2"]
    trainer_args += ["--stop-grace-s", "5", "--allowed-roots", str(tmp_path)]
    with DaemonProcess("registry_gateway", gateway_args(mlflow_uri, tmp_path / "registry-cache"), timeout_s=90) as reg:
        trainer = DaemonProcess("trainer", [*trainer_args, "--registry-addr", reg.address], timeout_s=60)
        with trainer:
            gateway_flags = ["--api-keys-file", str(keys), "--registry-addr", reg.address]
            gateway_flags += ["--detector-addrs", f"127.0.0.1:{free_port()}", "--trainer-addr", trainer.address]
            gateway_flags += ["--health-check-interval-s", "0.2", "--rate-limit-rps", "0"]
            with DaemonProcess("gateway", gateway_flags, timeout_s=30) as gateway:
                async with insecure_channel(gateway.address) as channel:
                    stub = training_pb2_grpc.TrainingServiceStub(channel)
                    first = await stub.StartTraining(request(data, model_name, epochs=2), metadata=bearer(), timeout=30)
                load = TrainerLoad(first.job.job_id)
                stop = asyncio.Event()
                watcher = asyncio.create_task(watch_client(gateway.address, load))
                poller = asyncio.create_task(poll_client(gateway.address, load, stop))
                job_dir = tmp_path / "work" / "jobs" / load.job_id

                async def trained_an_epoch() -> bool:
                    async with insecure_channel(trainer.address) as direct:
                        job = await training_pb2_grpc.TrainingServiceStub(direct).GetTrainingJob(
                            training_pb2.GetTrainingJobRequest(job_id=load.job_id), timeout=10
                        )
                    if job.job.state in DONE:  # not an AssertionError: eventually_async would retry it
                        raise RuntimeError(f"the job ended before the kill: {job.job}")
                    return bool(job.job.history)

                try:
                    trained: bool = await eventually_async(
                        trained_an_epoch,
                        what="the job to finish its first epoch",
                        timeout_s=400,
                        detail=lambda: "\n".join(p.read_text()[-3000:] for p in job_dir.glob("worker-*.log")),
                    )
                    assert trained
                    assert trainer.proc is not None
                    trainer.proc.send_signal(signal.SIGKILL)
                    trainer.proc.wait(timeout=30)
                    load.phase = "down"
                    orphans = worker_pids(load.job_id)
                    await eventually_async(
                        lambda: load.polls.get("down", Counter())["UNAVAILABLE"] >= 3 and load.watch_errors,
                        what="the clients to see the trainer gone",
                        timeout_s=30,
                        detail=lambda: load,
                    )
                    load.phase = "back"
                    trainer.start()
                    restarted_at = time.monotonic()
                    # A job started after the restart, next to the resumed one, succeeds too. The gateway may
                    # still be reconnecting to the trainer for a moment: UNAVAILABLE, and the client sends again.
                    second = await start_when_available(gateway.address, request(data, model_name, epochs=1), load)
                    done = await asyncio.wait_for(watcher, timeout=300)
                    resumed_s = time.monotonic() - restarted_at
                    async with insecure_channel(gateway.address) as channel:
                        stub = training_pb2_grpc.TrainingServiceStub(channel)
                        async for reply in stub.WatchTrainingJob(
                            training_pb2.WatchTrainingJobRequest(job_id=second.job.job_id),
                            metadata=bearer(),
                            timeout=300,
                        ):
                            new = reply.job
                finally:
                    stop.set()
                    watcher.cancel()
                    results = await asyncio.gather(watcher, poller, return_exceptions=True)
                versions = await versions_of(gateway.address, model_name)
    errors = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
    assert not errors, errors
    assert not load.wrong_answers, load.wrong_answers[:5]
    assert done.state == SUCCEEDED, (done.error, trainer.log()[-3000:])
    assert new.state == SUCCEEDED, new.error
    # Resumed, not started over: every epoch reported once, the last one the job's last.
    epochs = [entry.epoch for entry in done.history]
    assert sorted(set(epochs)) == sorted(epochs) and max(epochs) == 1, epochs
    assert orphans, "the killed trainer's worker had already ended: nothing orphaned to check"
    assert not [pid for pid in orphans if alive(pid)], "a worker of the killed trainer still runs"
    # Calls: OK while it was up, UNAVAILABLE only while it was dead, the watcher re-watched.
    assert set(load.polls["up"]) == {"OK"}, load.polls
    assert set(load.polls["down"]) == {"UNAVAILABLE"}, load.polls
    assert set(load.polls["back"]) <= {"OK", "UNAVAILABLE"} and load.polls["back"]["OK"] >= 1, load.polls
    assert set(load.watch_errors) == {"UNAVAILABLE"}, load.watch_errors
    # One whole version per job: nothing half-registered, nothing registered twice.
    by_job = Counter(v.tags[TAG_JOB_ID] for v, _ in versions)
    assert by_job == {load.job_id: 1, second.job.job_id: 1}, by_job
    for version, onnx in versions:
        assert len(onnx) == version.size_bytes and hashlib.sha256(onnx).hexdigest() == version.sha256, version
    assert {done.registered.version, new.registered.version} == {v.version for v, _ in versions}
    print(
        f"trainer: job resumed and ended {resumed_s:.0f} s after the restart; polls {load.polls}; "
        f"watches {load.watches} ({dict(load.watch_errors)}); StartTraining retried {load.start_retries}x"
    )
