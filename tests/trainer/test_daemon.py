"""`python -m trainer` as a user runs it, without any job running: its metrics count the jobs it
finds in its work directory, earlier runs' included."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import DaemonProcess
from trainer.jobs import STATE_FILE, JobRecord, State

pytestmark = pytest.mark.e2e

NOWHERE = "127.0.0.1:1"  # refused at once: this trainer is asked for nothing


def write_job(jobs_dir: Path, job_id: str, state: State, started_at: float, finished_at: float = 0.0) -> None:
    job = JobRecord(job_id=job_id, request={}, state=state, started_at=started_at, finished_at=finished_at)
    (jobs_dir / job_id).mkdir(parents=True)
    (jobs_dir / job_id / STATE_FILE).write_text(json.dumps(job.to_json()))


def test_metrics_count_jobs_by_state_and_time_finished_ones(tmp_path: Path) -> None:
    jobs_dir = tmp_path / "work" / "jobs"
    now = time.time()
    write_job(jobs_dir, "done", State.SUCCEEDED, now - 1000, now - 880)  # 120 s
    write_job(jobs_dir, "broke", State.FAILED, now - 500, now - 470)  # 30 s
    # Running when an earlier trainer stopped, before its data set was ready: it failed with that trainer.
    write_job(jobs_dir, "orphan", State.RUNNING, now - 20)
    args = ["--work-dir", str(tmp_path / "work"), "--feature-addr", NOWHERE, "--registry-addr", NOWHERE]
    with (
        DaemonProcess("trainer", args, timeout_s=60) as daemon,
        urllib.request.urlopen(daemon.metrics_url, timeout=10) as reply,
    ):
        text = reply.read().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    by_state = {s: value("carmesh_trainer_jobs", state=s) for s in ("pending", "running", "succeeded", "failed")}
    assert by_state == {"pending": 0, "running": 0, "succeeded": 1, "failed": 2}
    assert value("carmesh_trainer_job_seconds_count", state="succeeded") == 1
    assert value("carmesh_trainer_job_seconds_sum", state="succeeded") == pytest.approx(120)
    assert value("carmesh_trainer_job_seconds_bucket", state="succeeded", le="60.0") == 0
    assert value("carmesh_trainer_job_seconds_bucket", state="succeeded", le="300.0") == 1
    # The failed job (30 s) and the orphan (failed at this start, about 20 s after it began).
    assert value("carmesh_trainer_job_seconds_bucket", state="failed", le="60.0") == 2
    assert value("carmesh_trainer_job_seconds_count", state="cancelled") == 0
    assert value("carmesh_trainer_jobs_resumed_total") == 0
