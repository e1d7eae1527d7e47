"""The trainer daemon as a user drives it: separate processes (trainer, registry_gateway) on the
session's real MLflow, a synthetic KITTI folder, tiny sizes so a job takes about a minute.

One 2-worker job is shared by the checks of what a finished job leaves behind (MLflow run,
registered version, alias, evaluation tag, exported ONNX); cancel and crash-resume run their own.
The README's `carmesh train` / `carmesh jobs` lines run through the CLI and the gateway where a
test starts, follows, lists or cancels a job; the other checks call the trainer directly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import yaml

from carmesh.v1 import common_pb2, registry_pb2, registry_pb2_grpc, training_pb2, training_pb2_grpc
from tests.cli.support import carmesh, constant_model
from tests.gateway.support import ADMIN_KEY, keys_file_text, run_gateway
from tests.helpers import DaemonProcess, free_port
from tests.registry.support import gateway_args
from tests.support import eventually
from trainer.data import load_folder
from trainer.synthetic import write_dataset
from trainer_worker.augment import frame_scale

pytestmark = pytest.mark.timeout(900)

DONE = {
    training_pb2.TRAINING_STATE_SUCCEEDED,
    training_pb2.TRAINING_STATE_FAILED,
    training_pb2.TRAINING_STATE_CANCELLED,
}


@dataclass
class Trainer:
    daemon: DaemonProcess
    registry: DaemonProcess
    gateway: DaemonProcess
    work_dir: Path
    data: Path
    mlflow_uri: str
    model_name: str

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.daemon.address)

    def stub(self, channel: grpc.Channel) -> training_pb2_grpc.TrainingServiceStub:
        return training_pb2_grpc.TrainingServiceStub(channel)


@pytest.fixture(scope="module")
def trainer(mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trainer]:
    root = tmp_path_factory.mktemp("trainer")
    data = write_dataset(root / "synthetic", train_images=8, val_images=4, width=320, height=180, seed=1)
    model_name = f"test-detector-{os.getpid()}"
    registry_args = gateway_args(mlflow_uri, root / "registry-cache")
    with DaemonProcess("registry_gateway", registry_args, timeout_s=90) as registry:
        args = [
            "--work-dir",
            str(root / "work"),
            "--registry-addr",
            registry.address,
            "--feature-addr",
            f"127.0.0.1:{free_port()}",  # no feature_service: snapshots answer UNAVAILABLE
            "--mlflow-tracking-uri",
            mlflow_uri,
            "--model-name",
            model_name,
            "--max-running-jobs",
            "2",
            "--stop-grace-s",
            "5",
            "--allowed-roots",
            str(root),
        ]
        keys = root / "api-keys"
        keys.write_text(keys_file_text())
        with (
            DaemonProcess("trainer", args, timeout_s=60) as daemon,
            run_gateway(keys, registry.address, None, "--trainer-addr", daemon.address) as gateway,
        ):
            yield Trainer(daemon, registry, gateway, root / "work", data, mlflow_uri, model_name)


def tiny_request(
    trainer: Trainer, *, epochs: int, workers: int = 1, max_duration_s: int = 0
) -> training_pb2.StartTrainingRequest:
    return training_pb2.StartTrainingRequest(
        dataset=str(trainer.data),
        config=training_pb2.TrainingConfig(
            preset="n",
            input_width=320,
            input_height=192,
            epochs=epochs,
            batch_size=2,
            crop_width=64,
            crop_height=64,
            classes=["car"],
            ignore_classes=["van"],
            max_duration_s=max_duration_s,
        ),
        workers=workers,
    )


# The flags of the CLI that give tiny_request's config (the CLI's preset default is "n").
TINY_FLAGS = (
    "--size",
    "320x192",
    "--crop",
    "64x64",
    "--batch-size",
    "2",
    "--classes",
    "car",
    "--ignore-classes",
    "van",
)


def cli(trainer: Trainer, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """`carmesh ARGS` through the fixture's gateway with the admin key."""
    return carmesh(*args, gateway=trainer.gateway.address, api_key=ADMIN_KEY, timeout_s=timeout_s)


def get_job(stub: training_pb2_grpc.TrainingServiceStub, job_id: str) -> training_pb2.TrainingJob:
    return stub.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=job_id), timeout=10).job


def wait_done(
    stub: training_pb2_grpc.TrainingServiceStub, job_id: str, timeout_s: float = 600
) -> training_pb2.TrainingJob:
    def finished() -> training_pb2.TrainingJob | None:
        job = get_job(stub, job_id)
        return job if job.state in DONE else None

    return eventually(finished, what=f"job {job_id} to finish", timeout_s=timeout_s, interval_s=0.2)


@pytest.fixture(scope="module")
def trained(trainer: Trainer) -> training_pb2.TrainingJob:
    """A 2-worker job started with `carmesh train DATA --workers 2 --detach`, followed through
    WatchTrainingJob until it ends."""
    started = cli(trainer, "train", str(trainer.data), *TINY_FLAGS, "--epochs", "2", "--workers", "2", "--detach")
    assert started.returncode == 0, started.stderr
    job_id = started.stdout.strip()
    assert job_id.startswith("train-") and f"started {job_id} on {trainer.data}" in started.stderr
    with trainer.channel() as channel:
        stub = trainer.stub(channel)
        seen_steps = []
        for reply in stub.WatchTrainingJob(training_pb2.WatchTrainingJobRequest(job_id=job_id), timeout=600):
            seen_steps.append(reply.job.step)
            last = reply.job
        assert last.state == training_pb2.TRAINING_STATE_SUCCEEDED, (last.error, _logs(trainer, last.job_id))
        assert last.request == tiny_request(trainer, epochs=2, workers=2), "the CLI sent another request"
        assert max(seen_steps) > 0, "watch never reported progress"
        return last


def _logs(trainer: Trainer, job_id: str) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted((trainer.work_dir / "jobs" / job_id).glob("worker-*.log")))


def test_a_finished_job_registers_a_challenger_with_its_evaluation(
    trainer: Trainer, trained: training_pb2.TrainingJob
) -> None:
    assert trained.registered.name == trainer.model_name and trained.registered.version
    assert trained.registered.alias == "challenger"
    assert trained.history, "no per-epoch metrics"
    assert {"loss", "box", "cls", "dfl", "steps_per_s"} <= set(trained.history[0].metrics)
    # Epochs without a time limit: the schedule is the steps, and it ran to its end.
    assert trained.progress == pytest.approx(1.0) and trained.steps_per_s > 0
    assert "val_map50" in trained.final_metrics and "val_map50_tall" in trained.final_metrics
    with grpc.insecure_channel(trainer.registry.address) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        version = registry.GetModelVersion(
            registry_pb2.GetModelVersionRequest(name=trainer.model_name, alias="challenger"), timeout=30
        ).version
    assert version.version == trained.registered.version
    assert version.family == registry_pb2.MODEL_FAMILY_YOLOV8
    assert list(version.class_names) == ["car"]
    assert (version.input_width, version.input_height) == (320, 192)
    evals = json.loads(version.tags["carmesh.eval"])
    assert list(evals) == [f"{trained.dataset}|car|van"]
    assert evals[f"{trained.dataset}|car|van"]["map50"] == pytest.approx(trained.final_metrics["val_map50"], abs=1e-6)
    assert version.tags["carmesh.train.dataset"] == trained.dataset
    # The default export is int8; its own evaluation is the one reported, the float32 one kept beside it.
    assert version.tags["carmesh.precision"] == "int8"
    assert "float32_val_map50" in trained.final_metrics


def test_jobs_list_and_watch_show_the_finished_job(trainer: Trainer, trained: training_pb2.TrainingJob) -> None:
    """`carmesh jobs list` and `carmesh jobs watch JOB` (on a job that has ended: one update, then the job)."""
    version = trained.registered.version
    listed = cli(trainer, "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    jobs = {job["job_id"]: job for job in map(json.loads, listed.stdout.splitlines())}
    assert jobs[trained.job_id]["state"] == "TRAINING_STATE_SUCCEEDED"
    assert jobs[trained.job_id]["registered"]["version"] == version
    table = cli(trainer, "jobs", "list")
    assert table.returncode == 0, table.stderr
    row = next(line.split() for line in table.stdout.splitlines() if line.startswith(trained.job_id))
    assert row[1] == "succeeded" and f"v{version}" in row

    watched = cli(trainer, "jobs", "watch", trained.job_id, "--json")
    assert watched.returncode == 0, watched.stderr
    job = json.loads(watched.stdout)
    assert (job["job_id"], job["state"]) == (trained.job_id, "TRAINING_STATE_SUCCEEDED")
    assert job["registered"] == {"name": trainer.model_name, "version": version, "alias": "challenger"}
    assert all(f"epoch {entry.epoch}:" in watched.stderr for entry in trained.history), watched.stderr
    missing = cli(trainer, "jobs", "watch", "train-nope")
    assert missing.returncode == 1 and missing.stderr.startswith("error: NOT_FOUND: "), missing.stderr


def test_the_mlflow_run_holds_params_epoch_metrics_and_artifacts(
    trainer: Trainer, trained: training_pb2.TrainingJob
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=trainer.mlflow_uri)
    run = client.get_run(trained.mlflow_run_id)
    assert run.data.params["workers"] == "2"
    assert run.data.params["model.input_width"] == "320"
    # The training scale the recipe derived from the export size, as a number.
    train_frames = load_folder(trainer.data, ["car"], ["van"]).train
    assert float(run.data.params["recipe.image_scale"]) == round(4 / 3 * frame_scale(train_frames, (320, 192)), 4)
    assert len(client.get_metric_history(run.info.run_id, "loss")) == len(trained.history)
    folders = ("model", "model-float32", "plots", "keras")
    artifacts = {a.path for folder in folders for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"model/model.onnx", "model/config.pbtxt", "model/carmesh.json"} <= artifacts
    assert {"plots/pr_curve.png", "plots/training_curves.png", "plots/sample_predictions.jpg"} <= artifacts
    assert "keras/body.keras" in artifacts
    assert "model-float32/model.onnx" in artifacts, "the int8 export keeps the float32 file it was made from"
    served = json.loads(Path(client.download_artifacts(run.info.run_id, "model/carmesh.json")).read_text())
    assert served["precision"] == "int8"
    parity = json.loads(Path(client.download_artifacts(run.info.run_id, "parity.json")).read_text())
    assert parity["ok"] and parity["score_max_abs"] < 1e-4
    assert max(parity["head_max_rel"]) < 1e-4
    assert parity["box_max_rel_input"] < 1e-4 or parity["box_max_abs_px"] < parity["box_allowance_px"]


def test_the_registered_onnx_runs_in_the_detector_engine(
    trainer: Trainer, trained: training_pb2.TrainingJob, tmp_path: Path
) -> None:
    from detector import engine as det_engine

    chunks = []
    with grpc.insecure_channel(trainer.registry.address) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        request = registry_pb2.DownloadModelRequest(name=trainer.model_name, version=trained.registered.version)
        for reply in registry.DownloadModel(request, timeout=60):
            if not reply.HasField("version"):
                chunks.append(reply.chunk)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"".join(chunks))
    spec = det_engine.ModelSpec(
        ref=det_engine.ModelRef(trainer.model_name, trained.registered.version), family="yolov8", class_names=("car",)
    )
    engine = det_engine.load_engine(path, spec, det_engine.EngineOptions(providers=["CPUExecutionProvider"]))
    assert engine.input_hw == (192, 320)
    frame = np.full((180, 320, 3), 90, np.uint8)
    tensor, _ = engine.preprocess(frame, (320, 180))
    out = engine.run(tensor[None])[0]
    assert out.shape == (5, (24 * 40) + (12 * 20) + (6 * 10))
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, "the registered file is the int8 export"


def test_evaluate_model_scores_a_version_like_the_trainer_did(
    trainer: Trainer, trained: training_pb2.TrainingJob
) -> None:
    with trainer.channel() as channel:
        reply = trainer.stub(channel).EvaluateModel(
            training_pb2.EvaluateModelRequest(
                model=common_pb2.ModelRef(name=trainer.model_name, version=trained.registered.version),
                dataset=str(trainer.data),
                classes=["car"],
                ignore_classes=["van"],
            ),
            timeout=300,
        )
    assert reply.images == 4 and list(reply.classes) == ["car"]
    # The job scored the int8 file it registered with ONNX Runtime, as EvaluateModel does.
    assert reply.map50 == pytest.approx(trained.final_metrics["val_map50"], abs=1e-3)


def test_a_time_limit_ends_training_and_still_registers_the_model(trainer: Trainer) -> None:
    """`carmesh train DATA --max-duration TIME`, followed by the CLI to the end (0.25m: 15 s in minutes)."""
    started = time.monotonic()
    followed = cli(
        trainer,
        "train",
        str(trainer.data),
        *TINY_FLAGS,
        "--epochs",
        "500",
        "--max-duration",
        "0.25m",
        "--json",
        timeout_s=400,
    )
    job = json.loads(followed.stdout) if followed.stdout.strip() else {}
    assert followed.returncode == 0, (followed.stderr[-3000:], _logs(trainer, job.get("job_id", "none")))
    with trainer.channel() as channel:
        done = (
            trainer.stub(channel)
            .GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=job["job_id"]), timeout=10)
            .job
        )
    assert done.request == tiny_request(trainer, epochs=500, max_duration_s=15)
    assert done.state == training_pb2.TRAINING_STATE_SUCCEEDED, (done.error, _logs(trainer, done.job_id))
    assert done.registered.version and done.epoch < 499
    assert done.progress == pytest.approx(1.0), "the time budget, not the steps, ended the schedule"
    assert time.monotonic() - started < 300


def _evals(trainer: Trainer, version: str) -> dict[str, dict[str, float]]:
    with grpc.insecure_channel(trainer.registry.address) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        found = registry.GetModelVersion(
            registry_pb2.GetModelVersionRequest(name=trainer.model_name, version=version), timeout=30
        ).version
    return dict(json.loads(found.tags.get("carmesh.eval", "{}")))


def test_the_promotion_gate_compares_on_the_same_validation_data(
    trainer: Trainer, trained: training_pb2.TrainingJob, tmp_path: Path
) -> None:
    """The CLI through the gateway: a champion without numbers for the challenger's data is
    evaluated there first (EvaluateModel), then champion moves only to a version at least as good."""
    name, trained_version = trainer.model_name, trained.registered.version
    key = f"{trained.dataset}|car|van"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return carmesh(*args, gateway=trainer.gateway.address, api_key=ADMIN_KEY, timeout_s=600)

    imported = cli(
        "models",
        "import",
        str(constant_model(tmp_path / "constant.onnx")),
        "--name",
        name,
        "--family",
        "yolov8",
        "--alias",
        "champion",
    )
    assert imported.returncode == 0, imported.stderr
    champion = next(line.split("version ")[1].split()[0] for line in imported.stdout.splitlines() if "version" in line)
    assert key not in _evals(trainer, champion)

    promoted = cli("models", "promote", name, trained_version)
    assert "gate:" in promoted.stdout + promoted.stderr, (promoted.stdout, promoted.stderr)
    champion_map = _evals(trainer, champion)[key]["map50"]  # evaluated by the gate, recorded on the version
    trained_map = _evals(trainer, trained_version)[key]["map50"]
    assert promoted.returncode == (0 if trained_map >= champion_map else 1), (promoted.stdout, promoted.stderr)
    if promoted.returncode == 0:
        assert f"version {trained_version} mAP50 {trained_map:.3f}" in promoted.stdout
        back = cli("models", "promote", name, champion)  # now both have numbers: no evaluation needed
        assert back.returncode == (0 if champion_map >= trained_map else 1), back.stderr
    else:
        assert "refused" in promoted.stderr and "--force" in promoted.stderr
    forced = cli("models", "promote", name, trained_version, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "gate" not in forced.stdout


def test_render_tfjob_prints_a_config_map_and_a_tfjob_and_starts_nothing(trainer: Trainer) -> None:
    """`carmesh train SNAPSHOT --render-tfjob --image IMAGE > tfjob.yaml`: RenderTrainingJob through the gateway."""
    with trainer.channel() as channel:
        before = len(trainer.stub(channel).ListTrainingJobs(training_pb2.ListTrainingJobsRequest(), timeout=10).jobs)
    rendered = cli(
        trainer,
        "train",
        "apollo-snap",
        "--classes",
        "car",
        "--ignore-classes",
        "van,truck,bus",
        "--max-duration",
        "28m",
        "--workers",
        "2",
        "--render-tfjob",
        "--image",
        "reg/carmesh:t",
    )
    assert rendered.returncode == 0, rendered.stderr
    config_map, tfjob = yaml.safe_load_all(rendered.stdout)  # stdout is only the manifest
    assert config_map["kind"] == "ConfigMap" and (tfjob["apiVersion"], tfjob["kind"]) == ("kubeflow.org/v1", "TFJob")
    name = tfjob["metadata"]["name"]
    assert name.startswith(f"train-{trainer.model_name}-") and config_map["metadata"]["name"] == f"{name}-spec"
    (template,) = config_map["data"].values()
    spec = json.loads(template)
    assert (spec["dataset"], spec["workers"], spec["max_duration_s"]) == ("apollo-snap", 2, 1680)  # 28m
    assert (spec["model"]["class_names"], spec["ignore_classes"]) == (["car"], ["van", "truck", "bus"])
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    assert (replicas["Chief"]["replicas"], replicas["Worker"]["replicas"]) == (1, 1)
    images = {c["image"] for r in replicas.values() for c in r["template"]["spec"]["containers"]}
    assert images == {"reg/carmesh:t"}
    with trainer.channel() as channel:
        after = len(trainer.stub(channel).ListTrainingJobs(training_pb2.ListTrainingJobsRequest(), timeout=10).jobs)
    assert after == before, "rendering must not start a job"


def test_bad_requests_fail_at_once_with_a_clear_status(trainer: Trainer) -> None:
    cases = [
        (
            dict(dataset=str(trainer.data), config=training_pb2.TrainingConfig(preset="xl")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "preset",
        ),
        (
            dict(dataset=str(trainer.data), config=training_pb2.TrainingConfig(input_width=100)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "multiple of 32",
        ),
        (dict(dataset=str(trainer.data), workers=99), grpc.StatusCode.INVALID_ARGUMENT, "workers"),
        (dict(dataset=str(trainer.data.parent / "no-such-folder")), grpc.StatusCode.NOT_FOUND, "does not exist"),
        (dict(dataset="/etc"), grpc.StatusCode.PERMISSION_DENIED, "allowed roots"),
        (dict(dataset=""), grpc.StatusCode.INVALID_ARGUMENT, "dataset is required"),
        (dict(dataset="apollo:2"), grpc.StatusCode.UNAVAILABLE, "feature_service"),
    ]
    with trainer.channel() as channel:
        stub = trainer.stub(channel)
        for fields, code, words in cases:
            with pytest.raises(grpc.RpcError) as failure:
                stub.StartTraining(training_pb2.StartTrainingRequest(**fields), timeout=30)
            assert failure.value.code() == code, (fields, failure.value.details())
            assert words in failure.value.details(), failure.value.details()
        with pytest.raises(grpc.RpcError) as failure:
            stub.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id="train-nope"), timeout=10)
        assert failure.value.code() == grpc.StatusCode.NOT_FOUND


def test_cancel_stops_the_workers_and_registers_nothing(trainer: Trainer) -> None:
    """`carmesh jobs cancel JOB` on a running job, then on the cancelled one (FAILED_PRECONDITION, exit 1)."""
    with trainer.channel() as channel:
        stub = trainer.stub(channel)
        job = stub.StartTraining(tiny_request(trainer, epochs=50), timeout=30).job
        eventually(
            lambda: get_job(stub, job.job_id).step > 0,
            what=f"job {job.job_id} to take a step",
            timeout_s=300,
            interval_s=0.2,
            detail=lambda: _logs(trainer, job.job_id),
        )
        cancelled = cli(trainer, "jobs", "cancel", job.job_id, "--timeout", "60")
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.startswith(f"{job.job_id}: "), cancelled.stdout
        done = wait_done(stub, job.job_id, timeout_s=60)
        assert done.state == training_pb2.TRAINING_STATE_CANCELLED
        assert not done.registered.version
        assert not _worker_pids(job.job_id)
    again = cli(trainer, "jobs", "cancel", job.job_id)
    assert again.returncode == 1 and again.stderr.startswith("error: FAILED_PRECONDITION: "), again.stderr


def _worker_pids(job_id: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"trainer_worker --job-dir .*{job_id}"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def test_a_killed_worker_restarts_the_job_from_its_last_checkpoint(trainer: Trainer) -> None:
    with trainer.channel() as channel:
        stub = trainer.stub(channel)
        job = stub.StartTraining(tiny_request(trainer, epochs=3, workers=2), timeout=30).job
        eventually(
            lambda: get_job(stub, job.job_id).history,
            what=f"job {job.job_id} to finish an epoch",
            timeout_s=400,
            interval_s=0.2,
            detail=lambda: _logs(trainer, job.job_id),
        )
        pids = _worker_pids(job.job_id)
        assert len(pids) == 2, pids
        os.kill(pids[1], signal.SIGKILL)
        done = wait_done(stub, job.job_id, timeout_s=600)
    assert done.state == training_pb2.TRAINING_STATE_SUCCEEDED, (done.error, _logs(trainer, job.job_id))
    log = (trainer.work_dir / "jobs" / job.job_id / "worker-0.log").read_text()
    assert "--- attempt 1 ---" in log, "the workers were not restarted"
    epochs = [entry.epoch for entry in done.history]
    # Resumed, not restarted: every epoch was reported once, and the last one is the job's last.
    assert sorted(set(epochs)) == sorted(epochs) and max(epochs) == 2, epochs


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_job_resumes_when_the_trainer_restarts(trainer: Trainer, stop_signal: signal.Signals) -> None:
    job_dir = trainer.work_dir / "jobs"
    with trainer.channel() as channel:
        stub = trainer.stub(channel)
        job = stub.StartTraining(tiny_request(trainer, epochs=3), timeout=30).job
        eventually(
            lambda: get_job(stub, job.job_id).history,
            what=f"job {job.job_id} to finish an epoch",
            timeout_s=400,
            interval_s=0.2,
            detail=lambda: _logs(trainer, job.job_id),
        )
    state = json.loads((job_dir / job.job_id / "state.json").read_text())
    if stop_signal == signal.SIGTERM:
        # The daemon stops the workers after their current step (they checkpoint) and exits.
        assert trainer.daemon.stop(timeout_s=60) == 0, trainer.daemon.log()[-3000:]
        assert not _worker_pids(job.job_id)
        state = json.loads((job_dir / job.job_id / "state.json").read_text())
        assert state["phase"].startswith("interrupted"), state
    else:
        # Killed outright: its workers run on, orphaned, until the next daemon stops them.
        assert trainer.daemon.proc is not None
        trainer.daemon.terminate(signal.SIGKILL)
        trainer.daemon.proc.wait(timeout=30)
        assert _worker_pids(job.job_id), "the orphaned worker already ended; nothing left to check"
    assert state["state"] == training_pb2.TRAINING_STATE_RUNNING, state
    trainer.daemon.start()
    with trainer.channel() as channel:
        done = wait_done(trainer.stub(channel), job.job_id, timeout_s=600)
    for pid in state["worker_pids"]:
        assert not _alive(pid), f"worker {pid} of the stopped daemon still runs"
    assert done.state == training_pb2.TRAINING_STATE_SUCCEEDED, (done.error, _logs(trainer, job.job_id))
    assert done.registered.version
    log = (job_dir / job.job_id / "worker-0.log").read_text()
    assert log.count("--- attempt 0 ---") == 2, "the workers did not run again after the restart"
    epochs = [entry.epoch for entry in done.history]
    # Resumed, not restarted: every epoch was reported once, and the last one is the job's last.
    assert sorted(set(epochs)) == sorted(epochs) and max(epochs) == 2, epochs


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return ") Z " not in stat  # a zombie has ended
