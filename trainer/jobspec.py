"""What a training job is, as the daemon hands it to its worker processes (``job.json``), and
the other files of a job's folder the two sides share (the chief's events are ``trainer.events``).

Plain JSON so the daemon never imports TensorFlow and a TFJob on a cluster can run the same
worker from the same file.

Cancel and registration exclude each other through ``commit.lock``: the daemon accepts a cancel
only by writing ``cancel`` under the lock while no ``result.json`` exists, and the chief registers
its model only under the lock while no ``cancel`` exists, so a job never registers a model after
a cancel was accepted, and a cancel is refused once the model is registered.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

JOB_FILE = "job.json"
EVENTS_FILE = "events.jsonl"
RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoints"
ARTIFACT_DIR = "artifacts"
CANCEL_FILE = "cancel"
COMMIT_LOCK_FILE = "commit.lock"


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    dataset: str  # what the user asked for, resolved: "name:version" or the folder
    data_path: str  # local folder the workers read
    data_format: str  # a kit.datasets format, "" to detect
    model: dict[str, Any]  # trainer.modelspec.ModelSpec.to_dict(); class_names may be empty: from the data
    ignore_classes: list[str] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)  # overrides of trainer_worker.loop.Recipe defaults
    init_checkpoint: str = ""
    max_duration_s: float = 0.0
    deadline_unix: float = 0.0  # training stops at the next step after this and the job finishes normally
    workers: int = 1
    threads_per_worker: int = 0
    model_name: str = "car-detector"
    # "int8" or "float32" (trainer_worker.quantize): the number format of the registered ONNX file.
    export_precision: str = "int8"
    mlflow_tracking_uri: str = ""
    experiment: str = "carmesh-training"
    registry_addr: str = ""
    challenger_alias: str = "challenger"
    # The trainer's mesh TLS files (CA, certificate, key paths, not contents) for the workers' registry
    # call; empty: plaintext (--mesh-plaintext).
    mesh_files: list[str] = field(default_factory=list)
    # MLflow's basic auth (kit/mlflow_auth.py): the user and the path of the file holding its password, as
    # the workers see it (never the password: job.json is no secret); empty: none.
    mlflow_username: str = ""
    mlflow_password_file: str = ""

    def write(self, job_dir: Path) -> None:
        tmp = job_dir / f".{JOB_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, job_dir / JOB_FILE)

    @classmethod
    def read(cls, job_dir: Path) -> JobSpec:
        data = json.loads((job_dir / JOB_FILE).read_text())
        return cls(**data)


@contextlib.contextmanager
def commit_lock(job_dir: Path) -> Iterator[None]:
    """Holds the job's commit lock (blocking; an flock, released if the holder dies)."""
    with (job_dir / COMMIT_LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cancel_requested(job_dir: Path) -> bool:
    return (job_dir / CANCEL_FILE).exists()


def request_cancel(job_dir: Path) -> bool:
    """Records a cancel unless the job already registered its model (then False). Blocks while the chief
    registers."""
    with commit_lock(job_dir):
        if (job_dir / RESULT_FILE).exists():
            return False
        (job_dir / CANCEL_FILE).touch()
        return True


def kill_outside_commit(job_dir: Path, pids: list[int]) -> None:
    """SIGKILLs the process groups of ``pids`` while holding the job's commit lock: a chief registering its
    model (under that lock) finishes first and writes its result, and one that is not cannot start to. Killed
    in the middle, it would leave a version registered with no result.json, and the resumed job would
    register a second one. Blocks as long as the registration takes."""
    with commit_lock(job_dir):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def read_result(job_dir: Path) -> dict[str, Any]:
    """The chief's result.json (a ResultEvent's fields), or {} when unreadable."""
    try:
        data = json.loads((job_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
