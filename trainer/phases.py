"""A training job's phases and the worker's exit codes: what the daemon (``trainer.jobs``) and its
worker processes (``trainer_worker``) agree on, free of TensorFlow.

``PhaseHold`` is a test hook: with ``CARMESH_TEST_TRAINER_HOLD`` naming a JSON file
``{"<model name>": "<phase>"}``, a job of that model waits at the start of that phase until it is
cancelled (or the file stops naming the phase), so a test reaches any phase without guessing times.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from pathlib import Path

HOLD_ENV = "CARMESH_TEST_TRAINER_HOLD"


class JobPhase(StrEnum):
    # Values are what TrainingJob.phase shows.
    PENDING = "pending"
    FETCHING_DATASET = "fetching data set"
    STARTING_WORKERS = "starting workers"
    # The chief worker reports these:
    LOADING_DATA = "loading data"
    TRAINING = "training"
    EVALUATING = "evaluating"
    EXPORTING = "exporting"
    REGISTERING = "registering"
    # The daemon again:
    RESTARTING = "restarting from checkpoint"  # a worker died; all restart from the last checkpoint
    RESUMING = "resuming from checkpoint"  # the daemon restarted while the job ran
    INTERRUPTED = "interrupted"  # the daemon stopped; the job resumes when it starts again
    DONE = "done"
    CANCELLED = "cancelled"


class WorkerExit(IntEnum):
    """``python -m trainer_worker``'s exit codes; the reason is the last ``error`` event and the log."""

    OK = 0
    # Failed while training (also Python's code for an uncaught exception): the daemon restarts
    # the job's workers from the last checkpoint.
    FAILED = 1
    # Stopped by SIGTERM (a cancel, or the daemon stopping) before the job registered anything.
    STOPPED = 3
    # A failure every restart would repeat (bad data, export, registration): the job fails.
    FINAL = 4


@dataclass(frozen=True)
class PhaseHold:
    """The test hook described above; ``path`` None (the variable unset) holds nothing."""

    path: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> PhaseHold:
        value = env.get(HOLD_ENV, "")
        return cls(Path(value) if value else None)

    def holds(self, model_name: str, phase: JobPhase) -> bool:
        if self.path is None:
            return False
        try:
            wanted = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(wanted, dict) and wanted.get(model_name) == phase.value
