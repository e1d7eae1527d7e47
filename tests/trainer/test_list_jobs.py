"""ListTrainingJobs pages through the jobs of earlier daemon runs: the trainer daemon as its own
process on a work dir holding ended jobs, so no job trains here."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import pytest

from carmesh.v1 import training_pb2, training_pb2_grpc
from kit.clients import insecure_channel
from tests.helpers import DaemonProcess, free_port
from tests.paging import assert_bad_pages_refused, assert_pages_cover
from trainer.jobs import STATE_FILE, JobRecord, State

pytestmark = pytest.mark.e2e

# Two jobs share a start time: the job id orders them, so no page boundary can split them badly.
STARTS = [1_700_000_000.5, 1_700_000_100.25, 1_700_000_100.25, 1_700_000_200.0, 1_700_000_300.75, 1_700_000_050.0]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    work = tmp_path_factory.mktemp("trainer-list")
    for i, started_at in enumerate(STARTS):
        job = JobRecord(job_id=f"train-old-{i}", request={}, state=State.SUCCEEDED, started_at=started_at)
        job.finished_at = started_at + 60
        (work / "jobs" / job.job_id).mkdir(parents=True)
        (work / "jobs" / job.job_id / STATE_FILE).write_text(json.dumps(job.to_json()))
    unreachable = f"127.0.0.1:{free_port()}"
    args = ["--work-dir", str(work), "--registry-addr", unreachable, "--feature-addr", unreachable]
    with DaemonProcess("trainer", [*args, "--metrics-port", "0"], timeout_s=90) as proc:
        yield proc


@pytest.fixture
async def stub(daemon: DaemonProcess) -> AsyncIterator[training_pb2_grpc.TrainingServiceStub]:
    async with insecure_channel(daemon.address) as channel:
        yield training_pb2_grpc.TrainingServiceStub(channel)


async def test_list_jobs_pages_newest_first_each_job_once(stub: training_pb2_grpc.TrainingServiceStub) -> None:
    request = training_pb2.ListTrainingJobsRequest()
    jobs = await assert_pages_cover(stub.ListTrainingJobs, request, "jobs", lambda j: j.job_id, at_least=len(STARTS))
    newest_first = sorted(range(len(STARTS)), key=lambda i: (-STARTS[i], f"train-old-{i}"))
    assert [j.job_id for j in jobs] == [f"train-old-{i}" for i in newest_first]
    await assert_bad_pages_refused(stub.ListTrainingJobs, request)
