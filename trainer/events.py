"""The events the chief worker reports to the daemon: ``events.jsonl`` in the job folder, one JSON
object per line, ``{"type": ..., **fields}``.

Reading is version-safe, so a daemon and workers of different releases still understand each
other: an unknown type (or phase) is skipped, unknown fields are ignored, missing ones take their
defaults, and a line that is not an object of that shape is dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from trainer.phases import JobPhase

log = logging.getLogger(__name__)


def _metrics(value: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class PhaseEvent:
    TYPE: ClassVar[str] = "phase"
    phase: JobPhase

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PhaseEvent:
        return cls(JobPhase(str(data["phase"])))  # ValueError for a phase this release does not know


@dataclass(frozen=True)
class RunEvent:
    """The chief's MLflow run (a resumed job keeps its run)."""

    TYPE: ClassVar[str] = "run"
    mlflow_run_id: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunEvent:
        return cls(str(data.get("mlflow_run_id", "")))


@dataclass(frozen=True)
class ProgressEvent:
    """A training step (throttled), or with ``epoch_end`` the end of an epoch and its mean metrics."""

    TYPE: ClassVar[str] = "progress"
    epoch: int
    step: int
    total_steps: int
    progress: float  # the schedule's, 0..1
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProgressEvent:
        return cls(
            epoch=int(data.get("epoch", 0)),
            step=int(data.get("step", 0)),
            total_steps=int(data.get("total_steps", 0)),
            progress=min(1.0, max(0.0, float(data.get("progress", 0.0)))),
            metrics=_metrics(data.get("metrics")),
        )


@dataclass(frozen=True)
class EpochEvent(ProgressEvent):
    TYPE: ClassVar[str] = "epoch"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EpochEvent:
        p = ProgressEvent.from_json(data)
        return cls(p.epoch, p.step, p.total_steps, p.progress, p.metrics)


@dataclass(frozen=True)
class ResultEvent:
    """The registered model: the job's outcome (also ``result.json``)."""

    TYPE: ClassVar[str] = "result"
    model_name: str
    version: str
    alias: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str = ""
    onnx_sha256: str = ""
    parity: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResultEvent:
        return cls(
            model_name=str(data.get("model_name", "")),
            version=str(data.get("version", "")),
            alias=str(data.get("alias", "")),
            metrics=_metrics(data.get("metrics")),
            mlflow_run_id=str(data.get("mlflow_run_id", "")),
            onnx_sha256=str(data.get("onnx_sha256", "")),
            parity=str(data.get("parity", "")),
        )


@dataclass(frozen=True)
class ErrorEvent:
    TYPE: ClassVar[str] = "error"
    message: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ErrorEvent:
        return cls(str(data.get("message", "")))


Event = PhaseEvent | RunEvent | ProgressEvent | EpochEvent | ResultEvent | ErrorEvent
_BY_TYPE: dict[str, Any] = {
    c.TYPE: c for c in (PhaseEvent, RunEvent, ProgressEvent, EpochEvent, ResultEvent, ErrorEvent)
}


def event_json(event: Event) -> dict[str, Any]:
    return {"type": event.TYPE, **asdict(event)}


def parse_event(data: Any) -> Event | None:
    """The event a decoded line holds, or None for one this release does not understand."""
    if not isinstance(data, Mapping):
        return None
    cls = _BY_TYPE.get(str(data.get("type", "")))
    if cls is None:
        return None
    try:
        event: Event = cls.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("skipping a %s event this trainer cannot read (%s): %s", data.get("type"), exc, data)
        return None
    return event


class EventLog:
    """Append-only JSON lines; the writer flushes each line so the daemon sees it at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def emit(self, event: Event) -> None:
        line = json.dumps(event_json(event), default=float)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
            out.flush()


class EventReader:
    """Reads the events appended since the last call; a torn last line waits for the next call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def read_new(self) -> Iterator[Event]:
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
            if not raw.strip():
                continue
            try:
                event = parse_event(json.loads(raw))
            except json.JSONDecodeError:
                continue
            if event is not None:
                yield event
