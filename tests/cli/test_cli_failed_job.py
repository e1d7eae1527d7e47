"""A followed training job that fails: the reason reaches stderr even when --output (written only on
success) takes stdout. Seen in a `make demo` whose job failed on a registry deadline: the demo printed
nothing but make's error line."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from carmesh.v1 import training_pb2, training_pb2_grpc
from tests.cli.support import carmesh


class _FailedJobTrainer(training_pb2_grpc.TrainingServiceServicer):
    """A TrainingService whose one job has failed (the trainer's own failure paths are tested in tests/trainer)."""

    def WatchTrainingJob(self, request, context):
        yield training_pb2.WatchTrainingJobResponse(
            job=training_pb2.TrainingJob(
                job_id=request.job_id, state=training_pb2.TRAINING_STATE_FAILED, error="registry deadline exceeded"
            )
        )


@pytest.fixture
def trainer_address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    training_pb2_grpc.add_TrainingServiceServicer_to_server(_FailedJobTrainer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def test_a_failed_job_says_why_on_stderr_when_stdout_goes_to_a_file(trainer_address, tmp_path: Path) -> None:
    out = tmp_path / "job.json"
    done = carmesh("jobs", "watch", "train-1", "--json", "--output", str(out), gateway=trainer_address, api_key="k")
    assert done.returncode != 0
    assert "error: job train-1 failed: registry deadline exceeded" in done.stderr
    assert not out.exists()
