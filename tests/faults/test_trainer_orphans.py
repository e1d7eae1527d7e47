"""A trainer killed outright leaves its workers running (their own session). The restarted trainer
stops them before it resumes the job; a chief caught registering its model must finish that first,
or the job would have a version registered without result.json, and the resumed job would register a
second one. Here the orphan is a real process that holds the job's commit lock as the chief does
while registering, ignores SIGTERM, and takes longer than the trainer's stop grace."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from tests.support import eventually_async
from trainer.jobs import STATE_FILE, JobLimits, JobManager, JobRecord, State
from trainer.jobspec import JobSpec
from trainer.phases import JobPhase

REGISTERING_S = 3.0  # longer than the stop grace below
STOP_GRACE_S = 0.5

# The chief's registration (trainer_worker.worker): the commit lock held around register + result.json.
ORPHAN = f"""
import fcntl, json, pathlib, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the chief stops only between phases
job_dir = pathlib.Path(sys.argv[2])
with open(job_dir / "commit.lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    (job_dir / "registering").touch()
    time.sleep({REGISTERING_S})
    result = {{"model_name": "kill-orphan", "version": "7", "alias": "challenger", "metrics": {{"val_map50": 0.5}}}}
    (job_dir / "result.json").write_text(json.dumps(result))
    fcntl.flock(lock, fcntl.LOCK_UN)
time.sleep(600)  # then hangs: only SIGKILL ends it
"""


def _alive(pid: int) -> bool:
    try:
        return ") Z " not in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False


async def test_a_restarted_trainer_lets_an_orphaned_chief_finish_registering_before_killing_it(tmp_path: Path) -> None:
    jobs_dir = tmp_path / "jobs"
    job_id = "train-orphan"
    job_dir = jobs_dir / job_id
    job_dir.mkdir(parents=True)
    JobSpec(job_id=job_id, dataset="d", data_path=str(tmp_path), data_format="", model={}).write(job_dir)
    orphan = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ORPHAN, "--job-dir", str(job_dir), start_new_session=True, cwd=tmp_path
    )
    try:
        await eventually_async(lambda: (job_dir / "registering").exists(), what="the orphan to start registering")
        # What the killed trainer left: the job RUNNING, registering, with its worker's pid.
        record = JobRecord(job_id, {}, State.RUNNING, JobPhase.REGISTERING, worker_pids=[orphan.pid])
        (job_dir / STATE_FILE).write_text(json.dumps(record.to_json()))

        manager = JobManager(jobs_dir, JobLimits(1, 0, STOP_GRACE_S, 0))
        manager.load()
        started = time.monotonic()
        assert manager.resume() == [job_id]
        try:
            await eventually_async(lambda: manager.get(job_id).state.done, what="the job to end", timeout_s=30)
        finally:
            await manager.close()
        waited_s = time.monotonic() - started
        done = manager.get(job_id)
    finally:
        if orphan.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(orphan.pid, signal.SIGKILL)
        await orphan.wait()

    assert done.state == State.SUCCEEDED, done
    assert (done.registered_name, done.registered_version, done.registered_alias) == ("kill-orphan", "7", "challenger")
    assert done.final_metrics == {"val_map50": 0.5}
    assert not _alive(orphan.pid)
    assert orphan.returncode == -signal.SIGKILL  # SIGTERM ignored, killed once its registration was over
    assert waited_s >= REGISTERING_S - 1.0, waited_s
    assert not list(job_dir.glob("worker-*.log")), "the job trained again after its model was registered"
