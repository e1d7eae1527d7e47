"""Training jobs on this machine: each job runs N ``trainer_worker`` processes on 127.0.0.1
with ``TF_CONFIG`` and is followed through the chief's ``events.jsonl`` (``trainer.events``).

A worker that dies takes the job's other workers down with it (a collective op would wait
forever otherwise); the job then restarts all of them, up to ``max_restarts`` times, and they
resume from the last epoch checkpoint. State survives a daemon restart as ``state.json`` per
job: a job whose workers were running when the daemon stopped (SIGTERM stops them after their
current step, with a checkpoint) resumes from that checkpoint when the daemon starts again; a job
that had not got its data yet failed with the daemon.

A cancel stops the job in whatever phase it is: the job's task is cancelled (which stops a download
or the workers, SIGTERM then SIGKILL after ``stop_grace_s``), and the cancel is recorded in the job's
folder under its commit lock, so the chief can no longer register a model (``trainer.jobspec``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from typing import Any

from trainer.errors import JobFinished, JobNotFound, TooManyJobs
from trainer.events import EpochEvent, ErrorEvent, EventReader, PhaseEvent, ProgressEvent, ResultEvent, RunEvent
from trainer.jobspec import (
    EVENTS_FILE,
    JOB_FILE,
    RESULT_FILE,
    JobSpec,
    cancel_requested,
    kill_outside_commit,
    read_result,
    request_cancel,
)
from trainer.phases import JobPhase, PhaseHold, WorkerExit

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
_POLL_S = 0.5
_HOLD_POLL_S = 0.1
# How much longer than stop_grace_s a cancel waits for the job to record itself cancelled.
_CANCEL_SLACK_S = 10.0


class State(IntEnum):
    # Values match carmesh.v1.TrainingState.
    PENDING = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def done(self) -> bool:
        return self in (State.SUCCEEDED, State.FAILED, State.CANCELLED)


@dataclass
class JobRecord:
    job_id: str
    request: dict[str, Any]  # the StartTrainingRequest as JSON (for GetTrainingJob)
    state: State = State.PENDING
    phase: JobPhase = JobPhase.PENDING
    dataset: str = ""
    fetched_frames: int = 0  # of the data set snapshot being downloaded
    total_frames: int = 0
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    steps_per_s: float = 0.0
    progress: float = 0.0  # the chief's schedule progress, 0..1
    history: list[dict[str, Any]] = field(default_factory=list)  # {"epoch": n, "metrics": {...}}
    final_metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str = ""
    registered_name: str = ""
    registered_version: str = ""
    registered_alias: str = ""
    error: str = ""
    restarts: int = 0
    worker_pids: list[int] = field(default_factory=list)  # of the latest attempt
    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = int(self.state)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        data = dict(data)
        data["state"] = State(int(data["state"]))
        data["phase"] = _phase_of(str(data.get("phase", "")))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _phase_of(text: str) -> JobPhase:
    """The phase a state file names; earlier releases wrote details after it ("fetching data set (3/9 frames)")."""
    for phase in sorted(JobPhase, key=lambda p: len(p.value), reverse=True):
        if text.startswith(phase.value):
            return phase
    return JobPhase.PENDING


@dataclass(frozen=True)
class JobLimits:
    max_running_jobs: int
    max_restarts: int
    stop_grace_s: float
    cpu_threads: int  # 0: all cores


def free_ports(count: int) -> list[int]:
    """Ports the OS just handed out; the workers bind them a moment later (a tiny race, retried by restarts)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    )


def _live_workers(pids: list[int], job_dir: Path) -> list[int]:
    """Those of ``pids`` that are still trainer workers of ``job_dir`` (a pid may have been reused since)."""
    marker = f"--job-dir {job_dir}".encode()
    live = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue  # gone (or no /proc: nothing to find)
        if marker in cmdline:
            live.append(pid)
    return live


# Reports a download's progress: (frames written, frames in the snapshot).
FetchProgress = Callable[[int, int], Awaitable[None]]
# Prepares a job's data (fetching a snapshot) and returns the spec the workers run.
Preparer = Callable[[JobRecord, FetchProgress], Awaitable[JobSpec]]


class JobManager:
    def __init__(self, jobs_dir: Path, limits: JobLimits, hold: PhaseHold | None = None) -> None:
        self._dir = jobs_dir
        self._limits = limits
        self._hold = hold if hold is not None else PhaseHold.from_env()
        self._jobs: dict[str, JobRecord] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._procs: dict[str, list[asyncio.subprocess.Process]] = {}
        self._cancelled: set[str] = set()
        self._interrupted: list[str] = []  # jobs of an earlier daemon run to resume
        self._closing = False
        self._changed = asyncio.Condition()

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self) -> None:
        """Reads the jobs of earlier daemon runs. Unfinished jobs with a job spec (their data was ready) are
        queued for :meth:`resume`; the others failed with the daemon."""
        self._dir.mkdir(parents=True, exist_ok=True)
        for state_file in sorted(self._dir.glob(f"*/{STATE_FILE}")):
            try:
                job = JobRecord.from_json(json.loads(state_file.read_text()))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("skipping unreadable %s: %s", state_file, exc)
                continue
            if not job.state.done:
                if (state_file.parent / JOB_FILE).exists():
                    self._interrupted.append(job.job_id)
                else:
                    job.state, job.finished_at = State.FAILED, time.time()
                    job.error = "the trainer stopped before the job's data set was ready; start it again"
                    self._save(job)
            self._jobs[job.job_id] = job

    def resume(self) -> list[str]:
        """Restarts the workers of the jobs :meth:`load` found interrupted; they continue from their last
        checkpoint (and their MLflow run). Returns their ids."""
        resumed, self._interrupted = self._interrupted, []
        for job_id in resumed:
            job = self._jobs[job_id]
            log.info("job %s: resuming from its last checkpoint", job_id)
            self._tasks[job_id] = asyncio.create_task(self._guard(job, self._resume(job)), name=f"job-{job_id}")
        return resumed

    async def close(self) -> None:
        """Stops every running job's workers after their current step; they keep their checkpoints and the jobs
        resume when the daemon starts again (jobs still fetching their data fail)."""
        self._closing = True
        await asyncio.gather(*(self._terminate(job_id) for job_id in list(self._procs)), return_exceptions=True)
        tasks = list(self._tasks.values())
        if not tasks:
            return
        # Jobs whose workers just stopped record themselves as interrupted; the rest (fetching data) are cut off.
        _, pending = await asyncio.wait(tasks, timeout=self._limits.stop_grace_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- queries -----------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no training job {job_id!r}; list them with `carmesh jobs list`")
        return replace(job)

    def all(self) -> list[JobRecord]:
        return sorted((replace(j) for j in self._jobs.values()), key=lambda j: j.started_at, reverse=True)

    async def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        """Yields the job now and after every change, until it ends."""
        last: dict[str, Any] | None = None
        while True:
            job = self.get(job_id)
            snapshot = job.to_json()
            if snapshot != last:
                last = snapshot
                yield job
            if job.state.done:
                return
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=5.0)

    # -- commands ----------------------------------------------------------------------------
    def start(self, request: dict[str, Any], prepare: Preparer) -> JobRecord:
        running = sum(1 for j in self._jobs.values() if not j.state.done)
        if running >= self._limits.max_running_jobs:
            raise TooManyJobs(
                f"{running} training job(s) already running (max_running_jobs={self._limits.max_running_jobs}); "
                "wait for one to finish or cancel it"
            )
        job_id = time.strftime("train-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        job = JobRecord(job_id=job_id, request=request)
        (self._dir / job_id).mkdir(parents=True)
        self._jobs[job_id] = job
        self._save(job)
        self._tasks[job_id] = asyncio.create_task(self._guard(job, self._run(job, prepare)), name=f"job-{job_id}")
        return replace(job)

    async def cancel(self, job_id: str) -> JobRecord:
        """Stops the job in any phase and returns it, CANCELLED once its workers are gone."""
        job = self.get(job_id)
        if job.state.done:
            raise JobFinished(f"job {job_id} already ended ({job.state.name}); nothing to cancel")
        if job_id not in self._cancelled:
            # Waits while the chief registers; after this no model is registered, or one already was.
            if not await asyncio.to_thread(request_cancel, self.job_dir(job_id)):
                raise JobFinished(f"job {job_id} already registered its model; nothing to cancel")
            self._cancelled.add(job_id)
            task = self._tasks.get(job_id)
            if task is not None:
                task.cancel()
            elif not self._jobs[job_id].state.done:  # interrupted, not resumed yet
                self._interrupted = [j for j in self._interrupted if j != job_id]
                await self._finish_cancelled(self._jobs[job_id])
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.wait({task}, timeout=self._limits.stop_grace_s + _CANCEL_SLACK_S)
        return self.get(job_id)

    # -- internals ---------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self._dir / job_id

    async def _update(self, job: JobRecord, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(job, key, value)
        self._save(job)
        async with self._changed:
            self._changed.notify_all()

    def _save(self, job: JobRecord) -> None:
        path = self._dir / job.job_id / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(job.to_json()))
        os.replace(tmp, path)

    async def _held(self, job: JobRecord, phase: JobPhase) -> None:
        """The test hook (``trainer.phases.PhaseHold``): waits here while it names this job's phase."""
        while self._hold.holds(str(job.request.get("modelName", "")), phase):
            await asyncio.sleep(_HOLD_POLL_S)

    async def _finish_cancelled(self, job: JobRecord) -> None:
        await self._update(job, state=State.CANCELLED, phase=JobPhase.CANCELLED, finished_at=time.time())

    async def _run(self, job: JobRecord, prepare: Preparer) -> None:
        await self._held(job, JobPhase.PENDING)
        await self._update(job, state=State.RUNNING, phase=JobPhase.FETCHING_DATASET)

        async def on_fetch(done: int, total: int) -> None:
            await self._update(job, fetched_frames=done, total_frames=total)
            await self._held(job, JobPhase.FETCHING_DATASET)

        spec = await prepare(job, on_fetch)
        spec.write(self.job_dir(job.job_id))
        await self._update(job, dataset=spec.dataset, phase=JobPhase.STARTING_WORKERS)
        await self._held(job, JobPhase.STARTING_WORKERS)
        await self._train(job, spec)

    async def _resume(self, job: JobRecord) -> None:
        job_dir = self.job_dir(job.job_id)
        spec = JobSpec.read(job_dir)
        await self._stop_orphans(job)
        if (job_dir / RESULT_FILE).exists():
            # Orphaned workers finished the job while no daemon watched: record it, do not train again.
            await self._consume(job, EventReader(job_dir / EVENTS_FILE))
            if not job.registered_version:  # the chief stopped between its result file and its result event
                result = read_result(job_dir)
                await self._update(
                    job,
                    registered_name=str(result.get("model_name", "")),
                    registered_version=str(result.get("version", "")),
                    registered_alias=str(result.get("alias", "")),
                    final_metrics={k: float(v) for k, v in dict(result.get("metrics") or {}).items()},
                )
            await self._update(job, state=State.SUCCEEDED, phase=JobPhase.DONE, finished_at=time.time())
            return
        if cancel_requested(job_dir):  # the daemon stopped right after accepting a cancel
            await self._finish_cancelled(job)
            return
        await self._update(job, state=State.RUNNING, phase=JobPhase.RESUMING, error="")
        await self._train(job, spec)

    async def _guard(self, job: JobRecord, work: Awaitable[None]) -> None:
        """Runs a job's work; whatever ends it early is recorded on the job."""
        try:
            await work
        except asyncio.CancelledError:
            if job.job_id in self._cancelled or not self._closing:
                await self._finish_cancelled(job)
        except Exception as exc:
            log.exception("job %s failed", job.job_id)
            message = getattr(exc, "args", [str(exc)])[0] if exc.args else type(exc).__name__
            await self._update(job, state=State.FAILED, error=str(message), finished_at=time.time())
        finally:
            self._tasks.pop(job.job_id, None)
            self._cancelled.discard(job.job_id)

    async def _train(self, job: JobRecord, spec: JobSpec) -> None:
        job_dir = self.job_dir(job.job_id)
        reader = EventReader(job_dir / EVENTS_FILE)
        attempt = job.restarts
        while True:
            codes = await self._run_workers(job, spec, reader, attempt)
            await self._consume(job, reader)
            if self._closing and job.job_id not in self._cancelled:
                await self._update(job, phase=JobPhase.INTERRUPTED)
                return
            if job.job_id in self._cancelled:
                await self._finish_cancelled(job)
                return
            if all(code == WorkerExit.OK for code in codes):
                if job.registered_version:
                    await self._update(job, state=State.SUCCEEDED, phase=JobPhase.DONE, finished_at=time.time())
                else:
                    await self._update(
                        job,
                        state=State.FAILED,
                        error=job.error or "workers ended without a result",
                        finished_at=time.time(),
                    )
                return
            if WorkerExit.FINAL in codes or attempt >= self._limits.max_restarts:
                error = job.error or f"worker exit codes {codes}; see {job_dir}/worker-*.log"
                await self._update(job, state=State.FAILED, error=error, finished_at=time.time())
                return
            attempt += 1
            log.warning("job %s: workers exited %s; restart %d from the last checkpoint", job.job_id, codes, attempt)
            await self._update(job, restarts=attempt, phase=JobPhase.RESTARTING, error="")

    async def _run_workers(self, job: JobRecord, spec: JobSpec, reader: EventReader, attempt: int) -> list[int]:
        job_dir = self.job_dir(job.job_id)
        ports = free_ports(spec.workers)
        procs: list[asyncio.subprocess.Process] = []
        self._procs[job.job_id] = procs  # filled as they start, so a cancel meanwhile stops them too
        try:
            for index in range(spec.workers):
                env = dict(os.environ)
                if spec.workers > 1:
                    env["TF_CONFIG"] = tf_config(ports, index)
                else:
                    env.pop("TF_CONFIG", None)
                env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
                with (job_dir / f"worker-{index}.log").open("ab") as log_file:
                    log_file.write(f"--- attempt {attempt} ---\n".encode())
                    log_file.flush()
                    procs.append(
                        await asyncio.create_subprocess_exec(
                            sys.executable,
                            "-m",
                            "trainer_worker",
                            "--job-dir",
                            str(job_dir),
                            env=env,
                            stdout=log_file,
                            stderr=asyncio.subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
            await self._update(job, worker_pids=[p.pid for p in procs])
            pending = {asyncio.ensure_future(p.wait()) for p in procs}
            while pending:
                done, pending = await asyncio.wait(pending, timeout=_POLL_S, return_when=asyncio.FIRST_COMPLETED)
                await self._consume(job, reader)
                if any(w.result() != 0 for w in done) and pending:
                    # One worker died: the rest would block in a collective op forever.
                    await self._terminate(job.job_id)
            return [p.returncode if p.returncode is not None else -1 for p in procs]
        except asyncio.CancelledError:
            await self._terminate(job.job_id)  # cancelled: the workers go with the job
            raise
        finally:
            self._procs.pop(job.job_id, None)

    async def _stop_orphans(self, job: JobRecord) -> None:
        """Workers of a daemon that was killed outright keep running (they have their own session); they would
        write the same checkpoints as the resumed ones, so they stop first."""
        orphans = _live_workers(job.worker_pids, self.job_dir(job.job_id))
        for pid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + self._limits.stop_grace_s
        while orphans and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            orphans = _live_workers(orphans, self.job_dir(job.job_id))
        if orphans:
            log.warning("job %s: workers %s of the earlier daemon ignored SIGTERM; killing them", job.job_id, orphans)
            await asyncio.to_thread(kill_outside_commit, self.job_dir(job.job_id), orphans)

    async def _terminate(self, job_id: str) -> None:
        procs = [p for p in self._procs.get(job_id, []) if p.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._limits.stop_grace_s
        late = []
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                late.append(p)
        if late:
            await asyncio.to_thread(kill_outside_commit, self.job_dir(job_id), [p.pid for p in late])
            for p in late:
                await p.wait()

    async def _consume(self, job: JobRecord, reader: EventReader) -> None:
        changes: dict[str, Any] = {}
        for event in reader.read_new():
            if isinstance(event, PhaseEvent):
                changes["phase"] = event.phase
            elif isinstance(event, RunEvent):
                changes["mlflow_run_id"] = event.mlflow_run_id
            elif isinstance(event, ProgressEvent):  # and EpochEvent
                changes.update(
                    epoch=event.epoch, step=event.step, total_steps=event.total_steps, progress=event.progress
                )
                if isinstance(event, EpochEvent):
                    history = [h for h in changes.get("history", job.history) if h["epoch"] != event.epoch]
                    history.append({"epoch": event.epoch, "metrics": dict(event.metrics)})
                    changes["history"] = history
                    if "steps_per_s" in event.metrics:
                        changes["steps_per_s"] = event.metrics["steps_per_s"]
            elif isinstance(event, ResultEvent):
                changes.update(
                    final_metrics=dict(event.metrics),
                    registered_name=event.model_name,
                    registered_version=event.version,
                    registered_alias=event.alias,
                )
            elif isinstance(event, ErrorEvent):
                changes["error"] = event.message
        if changes:
            await self._update(job, **changes)
