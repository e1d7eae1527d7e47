"""What a training job is, as the daemon hands it to its worker processes (``job.json``), and
the events the chief worker reports back (``events.jsonl``, one JSON object per line).

Both sides are plain JSON so the daemon never imports TensorFlow and a TFJob on a cluster
can run the same worker from the same file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

JOB_FILE = "job.json"
EVENTS_FILE = "events.jsonl"
RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoints"
ARTIFACT_DIR = "artifacts"


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    dataset: str  # what the user asked for, resolved: "name:version" or the folder
    data_path: str  # local folder the workers read
    data_format: str  # a kit.datasets format, "" to detect
    model: dict[str, Any]  # trainer.model.ModelSpec.to_dict(); class_names may be empty: from the data
    ignore_classes: list[str] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)  # overrides of trainer.loop.Recipe defaults
    init_checkpoint: str = ""
    max_duration_s: float = 0.0
    deadline_unix: float = 0.0  # training stops at the next step after this and the job finishes normally
    workers: int = 1
    threads_per_worker: int = 0
    model_name: str = "car-detector"
    mlflow_tracking_uri: str = ""
    experiment: str = "carmesh-training"
    registry_addr: str = ""
    challenger_alias: str = "challenger"

    def write(self, job_dir: Path) -> None:
        tmp = job_dir / f".{JOB_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, job_dir / JOB_FILE)

    @classmethod
    def read(cls, job_dir: Path) -> JobSpec:
        data = json.loads((job_dir / JOB_FILE).read_text())
        return cls(**data)


class EventLog:
    """Append-only JSON lines; the writer flushes each line so the daemon sees it at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def emit(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"type": kind, **fields}, default=float)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
            out.flush()


class EventReader:
    """Reads the events appended since the last call; a torn last line waits for the next call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def read_new(self) -> Iterator[dict[str, Any]]:
        try:
            with self.path.open("rb") as src:
                src.seek(self._offset)
                data = src.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self._offset += end + 1
        for raw in data[: end + 1].splitlines():
            if raw.strip():
                try:
                    yield json.loads(raw)
                except json.JSONDecodeError:
                    continue
