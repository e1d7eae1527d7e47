"""A job record on the wire: the typed phase as its string, download progress in its own fields."""

from __future__ import annotations

from carmesh_cli.train import phase_line
from trainer.jobs import JobRecord
from trainer.phases import JobPhase
from trainer.server import job_message


def test_download_progress_has_its_own_fields_and_the_cli_shows_it() -> None:
    job = JobRecord(job_id="j1", request={}, phase=JobPhase.FETCHING_DATASET, fetched_frames=3, total_frames=9)
    msg = job_message(job)
    assert (msg.phase, msg.fetched_frames, msg.total_frames) == ("fetching data set", 3, 9)
    assert phase_line(msg) == "fetching data set (3/9 frames)"


def test_every_phase_travels_as_its_value() -> None:
    for phase in JobPhase:
        assert job_message(JobRecord(job_id="j", request={}, phase=phase)).phase == phase.value


def test_a_finished_download_shows_only_the_phase() -> None:
    job = JobRecord(job_id="j2", request={}, phase=JobPhase.TRAINING, fetched_frames=9, total_frames=9)
    assert phase_line(job_message(job)) == "training"
