"""One camera's tracker: ByteTrack (Roboflow's ``trackers``) plus the line and zone counters.

Pure: detections in, tracks and events out, no I/O. ByteTrack itself is not ours: supervision
moved its ``ByteTrack`` to Roboflow's ``trackers`` package (``ByteTrackTracker``, the same
algorithm, maintained there); this module only feeds it in order and keeps the bookkeeping
a counting service needs:
- frames are taken in ``seq`` order; one older than or equal to the newest seen is refused
  (counted as out of order) because a Kalman filter cannot go back in time;
- a jump in ``seq`` is a gap (counted, with the frames missing): ByteTrack predicts across
  it by the capture time, so tracks survive a latest-frame source dropping frames;
- ByteTrack is class-agnostic; a track's class is the most frequent class of its boxes, and of
  boxes of different classes on one object only the best is kept;
- a track that ByteTrack drops is retired: it leaves the zones it was in.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tracking.counting import CountKey, CrossingCounter, Event
from tracking.geometry import Layout


@dataclass(frozen=True)
class TrackerConfig:
    frame_rate_hz: float = 30.0  # nominal; the capture times drive the motion model
    lost_track_s: float = 1.0  # how long a track outlives its last box (occlusions)
    activation_score: float = 0.5  # a box this sure starts a track
    high_score: float = 0.5  # ByteTrack's split between first- and second-stage boxes
    min_iou: float = 0.3  # 0.1 let a track leaving at the frame's edge take over a car entering there
    confirm_frames: int = 2  # boxes in a row before a track gets an id (noise filter)
    margin_px: float = 3.0  # the counting hysteresis band (tracking.counting)
    # A box overlapping a better one this much is the same vehicle boxed twice: the detector's NMS is
    # per class, and a car also boxed as a van started a second track that counted again (docs/tracking.md).
    duplicate_iou: float = 0.6


@dataclass(frozen=True)
class FrameDetections:
    """One frame's boxes ([N, 4] x1, y1, x2, y2 source pixels), scores and class ids."""

    seq: int
    timestamp_s: float
    boxes_xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray


@dataclass(frozen=True)
class Track:
    track_id: int
    class_id: int
    box_xyxy: tuple[float, float, float, float]
    score: float
    first_seen_seq: int
    first_seen_s: float
    last_seen_seq: int
    last_seen_s: float


@dataclass(frozen=True)
class FrameResult:
    seq: int
    accepted: bool  # False: out of order or a repeat; nothing changed
    missing_frames: int  # frames skipped in seq right before this one
    tracks: tuple[Track, ...] = ()
    events: tuple[Event, ...] = ()
    dropped_boxes: int = 0  # non-finite, empty or inverted boxes


@dataclass
class TrackerStats:
    frames: int = 0
    out_of_order: int = 0
    restarts: int = 0  # the source's seq started again (later capture times): a new run of the camera
    gaps: int = 0
    missing_frames: int = 0
    dropped_boxes: int = 0


@dataclass
class _TrackInfo:
    first_seq: int
    first_s: float
    last_seq: int = 0
    last_s: float = 0.0
    classes: Counter[int] = field(default_factory=Counter)

    @property
    def class_id(self) -> int:
        return self.classes.most_common(1)[0][0]


def anchor_of(box: tuple[float, float, float, float] | np.ndarray) -> tuple[float, float]:
    """The bottom centre of a box: where a car meets the road."""
    return (float(box[0] + box[2]) / 2.0, float(box[3]))


class CameraTracker:
    def __init__(self, layout: Layout, config: TrackerConfig | None = None) -> None:
        # Imported here: the package (and supervision under it) is the tracker extra's, and
        # importing it costs ~0.5 s that modules importing this one should not pay.
        from trackers import ByteTrackTracker

        self.config = config or TrackerConfig()
        self.layout = layout
        self.counter = CrossingCounter(layout, self.config.margin_px)
        self.stats = TrackerStats()
        self._bytetrack = ByteTrackTracker(
            lost_track_buffer=max(1, round(self.config.lost_track_s * 30.0)),  # in 30 fps frames
            frame_rate=self.config.frame_rate_hz,
            track_activation_threshold=self.config.activation_score,
            minimum_consecutive_frames=self.config.confirm_frames,
            minimum_iou_threshold=self.config.min_iou,
            high_conf_det_threshold=self.config.high_score,
        )
        self._tracks: dict[int, _TrackInfo] = {}
        self._last_seq: int | None = None
        self._clock_s: float | None = None

    @property
    def totals(self) -> Counter[CountKey]:
        return self.counter.totals

    def occupancy(self, zone: str) -> int:
        return self.counter.occupancy(zone)

    def checkpoint(self) -> dict[str, Any]:
        """The whole state as JSON-able values (tracking.state): store it with the consumed offset."""
        from tracking.state import dump

        return dump(self)

    @classmethod
    def from_checkpoint(
        cls, layout: Layout, state: dict[str, Any], config: TrackerConfig | None = None
    ) -> CameraTracker:
        """A tracker that continues where the checkpointed one stopped (same layout and config)."""
        from tracking.state import restore

        tracker = cls(layout, config)
        restore(tracker, state)
        return tracker

    def update(self, frame: FrameDetections) -> FrameResult:
        import supervision as sv

        if self._last_seq is not None and frame.seq <= self._last_seq:
            if self._clock_s is not None and frame.timestamp_s > self._clock_s + self.config.lost_track_s:
                # seq went back but time went on, past every track's life: the source started again
                # (a re-created source, an ingestor without its state). Refusing its frames until seq
                # passed the old run's would stop counting the camera for as long as that run lasted.
                self.stats.restarts += 1
                self._last_seq = None
            else:
                self.stats.out_of_order += 1
                return FrameResult(frame.seq, accepted=False, missing_frames=0)
        missing = 0 if self._last_seq is None else frame.seq - self._last_seq - 1
        if missing:
            self.stats.gaps += 1
            self.stats.missing_frames += missing
        self._last_seq = frame.seq
        self.stats.frames += 1
        clock_s = self._advance_clock(frame.timestamp_s, missing)

        boxes, scores, class_ids, dropped = _clean(frame)
        self.stats.dropped_boxes += dropped
        keep = _one_box_per_object(boxes, scores, self.config.duplicate_iou)
        boxes, scores, class_ids = boxes[keep], scores[keep], class_ids[keep]
        detections = sv.Detections(xyxy=boxes, confidence=scores, class_id=class_ids)
        tracked = self._bytetrack.update(detections, timestamp=clock_s)

        tracks: list[Track] = []
        events: list[Event] = []
        confidences, class_ids_out, track_ids = tracked.confidence, tracked.class_id, tracked.tracker_id
        # ByteTrack fills all three for whatever it returns (typed optional in supervision).
        assert confidences is not None and class_ids_out is not None and track_ids is not None
        for box, score, class_id, track_id in zip(tracked.xyxy, confidences, class_ids_out, track_ids, strict=True):
            if track_id < 0:
                continue  # not confirmed yet, or a low-score box no track claimed
            tid = int(track_id)
            info = self._tracks.setdefault(tid, _TrackInfo(frame.seq, frame.timestamp_s))
            info.last_seq, info.last_s = frame.seq, frame.timestamp_s
            info.classes[int(class_id)] += 1
            xyxy = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
            tracks.append(
                Track(
                    tid, info.class_id, xyxy, float(score), info.first_seq, info.first_s, frame.seq, frame.timestamp_s
                )
            )
            events += self.counter.observe(tid, info.class_id, anchor_of(xyxy), frame.seq, frame.timestamp_s)

        alive = {t.tracker_id for t in self._bytetrack.tracks}
        for tid in [tid for tid in self._tracks if tid not in alive]:
            info = self._tracks.pop(tid)
            events += self.counter.retire(tid, info.class_id, frame.seq, frame.timestamp_s)
        return FrameResult(frame.seq, True, missing, tuple(tracks), tuple(events), dropped)

    def _advance_clock(self, timestamp_s: float, missing: int) -> float:
        """The motion model's time: capture times, kept strictly increasing (a clock stepping
        back, or a source without times, advances one nominal frame per frame in seq)."""
        nominal_s = (missing + 1) / self.config.frame_rate_hz
        if self._clock_s is None:
            self._clock_s = timestamp_s if math.isfinite(timestamp_s) else 0.0
        elif math.isfinite(timestamp_s) and timestamp_s > self._clock_s:
            self._clock_s = timestamp_s
        else:
            self._clock_s += nominal_s
        return self._clock_s


def _clean(frame: FrameDetections) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    boxes = np.asarray(frame.boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(frame.scores, dtype=np.float64).reshape(-1)
    class_ids = np.asarray(frame.class_ids, dtype=np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(class_ids):
        raise ValueError(f"{len(boxes)} boxes, {len(scores)} scores and {len(class_ids)} class ids differ in number")
    keep = (
        np.isfinite(boxes).all(axis=1)
        & np.isfinite(scores)
        & (boxes[:, 2] > boxes[:, 0])
        & (boxes[:, 3] > boxes[:, 1])
        & (scores >= 0)
        & (scores <= 1)
    )
    return boxes[keep], scores[keep], class_ids[keep], int((~keep).sum())


def _one_box_per_object(boxes: np.ndarray, scores: np.ndarray, max_iou: float) -> np.ndarray:
    """Indices of the boxes kept, in input order: greedy NMS across classes, best score first."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    for i in order:
        if kept:
            k = np.asarray(kept)
            w = np.clip(np.minimum(boxes[k, 2], boxes[i, 2]) - np.maximum(boxes[k, 0], boxes[i, 0]), 0, None)
            h = np.clip(np.minimum(boxes[k, 3], boxes[i, 3]) - np.maximum(boxes[k, 1], boxes[i, 1]), 0, None)
            inter = w * h
            if (inter / (areas[k] + areas[i] - inter) > max_iou).any():
                continue
        kept.append(int(i))
    return np.asarray(sorted(kept), np.int64)
