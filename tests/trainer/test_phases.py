"""The daemon-worker contract without processes: events read back version-safely, phases of older
state files, and the commit lock that keeps a cancel and a registration apart."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from trainer.events import (
    EpochEvent,
    ErrorEvent,
    EventLog,
    EventReader,
    PhaseEvent,
    ProgressEvent,
    ResultEvent,
    RunEvent,
    parse_event,
)
from trainer.jobs import JobRecord, State
from trainer.jobspec import CANCEL_FILE, RESULT_FILE, cancel_requested, commit_lock, request_cancel
from trainer.phases import JobPhase, PhaseHold


def test_events_round_trip_through_the_log(tmp_path: Path) -> None:
    sent = [
        PhaseEvent(JobPhase.TRAINING),
        RunEvent("run-1"),
        ProgressEvent(0, 3, 10, 0.3, {"loss": 1.5}),
        EpochEvent(0, 5, 10, 0.5, {"loss": 1.25, "steps_per_s": 2.0}),
        ResultEvent("car-detector", "7", "challenger", {"val_map50": 0.5}, "run-1", "abc", "ok"),
        ErrorEvent("boom"),
    ]
    log = EventLog(tmp_path / "events.jsonl")
    for event in sent:
        log.emit(event)
    assert list(EventReader(tmp_path / "events.jsonl").read_new()) == sent


def test_the_reader_skips_what_it_does_not_understand_and_fills_what_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [
        {"type": "phase", "phase": "quantizing"},  # a phase of a newer worker
        {"type": "telemetry", "gpu": 1},  # a type of a newer worker
        {"type": "phase", "phase": "exporting", "since": 12.5},  # a field of a newer worker
        {"type": "progress", "step": 4},  # fields missing
        {"type": "epoch", "epoch": "x"},  # not a number
        ["not", "an", "object"],
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "not json\n" + '{"type": "error", "mess')
    reader = EventReader(path)
    assert list(reader.read_new()) == [PhaseEvent(JobPhase.EXPORTING), ProgressEvent(0, 4, 0, 0.0, {})]
    with path.open("a") as out:  # the torn line completes
        out.write('age": "late"}\n')
    assert list(reader.read_new()) == [ErrorEvent("late")]
    assert parse_event({"type": "progress", "progress": 7}) == ProgressEvent(0, 0, 0, 1.0, {})


def test_state_files_of_earlier_releases_read_their_phase() -> None:
    def phase(text: str) -> JobPhase:
        return JobRecord.from_json({"job_id": "j", "request": {}, "state": int(State.RUNNING), "phase": text}).phase

    assert phase("fetching data set (3/9 frames)") == JobPhase.FETCHING_DATASET
    assert phase("interrupted: the trainer stopped; the job resumes") == JobPhase.INTERRUPTED
    assert phase("registering") == JobPhase.REGISTERING
    record = JobRecord("j", {}, phase=JobPhase.EXPORTING)
    assert json.loads(json.dumps(record.to_json()))["phase"] == "exporting"


def test_a_cancel_waits_for_a_registration_under_way_and_then_is_refused(tmp_path: Path) -> None:
    registering = threading.Event()
    finish = threading.Event()

    def chief() -> None:
        with commit_lock(tmp_path):
            registering.set()
            finish.wait(10)
            (tmp_path / RESULT_FILE).write_text("{}")

    thread = threading.Thread(target=chief)
    thread.start()
    assert registering.wait(10)
    answer: list[bool] = []
    canceller = threading.Thread(target=lambda: answer.append(request_cancel(tmp_path)))
    canceller.start()
    canceller.join(0.3)
    assert canceller.is_alive(), "the cancel did not wait for the registration"
    finish.set()
    thread.join(10)
    canceller.join(10)
    assert answer == [False] and not cancel_requested(tmp_path)


def test_an_accepted_cancel_is_recorded_for_the_chief(tmp_path: Path) -> None:
    assert request_cancel(tmp_path) and cancel_requested(tmp_path)
    assert (tmp_path / CANCEL_FILE).exists()


def test_the_hold_names_a_phase_per_model(tmp_path: Path) -> None:
    hold_file = tmp_path / "hold.json"
    hold = PhaseHold.from_env({"CARMESH_TEST_TRAINER_HOLD": str(hold_file)})
    assert not hold.holds("m", JobPhase.TRAINING)  # no file yet
    hold_file.write_text(json.dumps({"m": "training"}))
    assert hold.holds("m", JobPhase.TRAINING) and not hold.holds("m", JobPhase.EXPORTING)
    assert not hold.holds("other", JobPhase.TRAINING)
    assert not PhaseHold.from_env({}).holds("m", JobPhase.TRAINING)
