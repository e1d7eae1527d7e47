"""Line crossing and zone enter/exit semantics on hand-made anchor paths, and the tracker's
handling of gaps, out-of-order frames and hostile boxes."""

from __future__ import annotations

import numpy as np
import pytest

from tracking.core import CameraTracker, FrameDetections, TrackerConfig
from tracking.counting import CrossingCounter, Direction
from tracking.geometry import validate_layout

LAYOUT = validate_layout(
    [("gate", (100, 0), (100, 200))],  # drawn downwards: in side is the screen's left
    [("bay", [(200, 0), (300, 0), (300, 200), (200, 200)])],
    640,
    360,
)


def _walk(counter: CrossingCounter, xs: list[float], y: float = 100, track_id: int = 1) -> list[tuple[str, str]]:
    events = []
    for seq, x in enumerate(xs):
        events += [(e.name, e.direction.value) for e in counter.observe(track_id, 0, (x, y), seq, seq / 30)]
    return events


def test_a_crossing_counts_once_with_its_direction() -> None:
    counter = CrossingCounter(LAYOUT, margin_px=3)
    assert _walk(counter, [150, 120, 101, 99, 80]) == [("gate", "in")]  # moving left: in
    assert _walk(counter, [80, 150], track_id=2) == [("gate", "out")]
    assert _walk(counter, [150, 60], track_id=3) == [("gate", "in")]  # a gap: one long step
    assert _walk(counter, [60, 150], track_id=4) == [("gate", "out")]
    assert counter.totals[("gate", Direction.IN, 0)] == 2


def test_jitter_inside_the_band_counts_nothing() -> None:
    counter = CrossingCounter(LAYOUT, margin_px=3)
    assert _walk(counter, [110, 102, 98, 101.5, 97.5, 102.5, 99, 110]) == []


def test_back_and_forth_counts_both_ways() -> None:
    counter = CrossingCounter(LAYOUT, margin_px=3)
    assert _walk(counter, [110, 90, 110]) == [("gate", "in"), ("gate", "out")]


def test_passing_beyond_the_segment_end_does_not_count() -> None:
    counter = CrossingCounter(LAYOUT, margin_px=3)
    assert _walk(counter, [150, 50], y=250) == []


def test_zone_enter_exit_occupancy_and_retirement() -> None:
    counter = CrossingCounter(LAYOUT, margin_px=3)
    assert _walk(counter, [150, 250, 260]) == [("bay", "enter")]
    assert counter.occupancy("bay") == 1
    assert _walk(counter, [250], track_id=2) == [("bay", "enter")]  # first seen inside enters
    assert counter.occupancy("bay") == 2
    assert _walk(counter, [260, 350]) == [("bay", "exit")]
    lost = counter.retire(2, 0, 10, 1.0)
    assert [(e.name, e.direction) for e in lost] == [("bay", Direction.EXIT)]
    assert counter.occupancy("bay") == 0
    assert counter.retire(2, 0, 10, 1.0) == []


def _frame(
    seq: int, boxes: list[tuple[float, float, float, float]], timestamp_s: float | None = None
) -> FrameDetections:
    return FrameDetections(
        seq=seq,
        timestamp_s=seq / 30 if timestamp_s is None else timestamp_s,
        boxes_xyxy=np.array(boxes, np.float64).reshape(-1, 4),
        scores=np.full(len(boxes), 0.9),
        class_ids=np.zeros(len(boxes), np.int64),
    )


def _car_at(x: float) -> tuple[float, float, float, float]:
    return (x - 20, 60, x + 20, 100)


def test_the_tracker_counts_across_gaps_and_refuses_frames_out_of_order() -> None:
    tracker = CameraTracker(LAYOUT, TrackerConfig())
    seqs = [0, 1, 2, 3, 4, 8, 9, 7, 10, 11, 11, 12, 13, 14, 15]  # 5..7 missing, then 7 late, 11 twice
    ids = set()
    for seq in seqs:
        result = tracker.update(_frame(seq, [_car_at(160 - 8 * seq)]))
        ids |= {t.track_id for t in result.tracks}
    assert tracker.totals[("gate", Direction.IN, 0)] == 1
    assert len(ids) == 1
    assert tracker.stats.gaps == 1 and tracker.stats.missing_frames == 3
    assert tracker.stats.out_of_order == 2
    assert tracker.stats.frames == len(seqs) - 2


def test_a_source_that_starts_again_from_seq_0_is_tracked_not_refused() -> None:
    tracker = CameraTracker(LAYOUT, TrackerConfig())
    for seq in range(16):  # the first run: a car crosses the gate
        tracker.update(_frame(seq, [_car_at(160 - 8 * seq)]))
    # The same camera an hour later, its source re-created: seq from 0 again, later capture times.
    later_s = 3600.0
    for seq in range(16):
        result = tracker.update(_frame(seq, [_car_at(160 - 8 * seq)], timestamp_s=later_s + seq / 30))
        assert result.accepted
    assert tracker.stats.restarts == 1 and tracker.stats.out_of_order == 0
    assert tracker.totals[("gate", Direction.IN, 0)] == 2
    # A late frame of the new run (an earlier capture time) is still refused.
    assert not tracker.update(_frame(3, [_car_at(136)], timestamp_s=later_s + 0.1)).accepted


def test_a_clock_stepping_back_does_not_stop_tracking() -> None:
    tracker = CameraTracker(LAYOUT)
    times = [10.0, 10.033, 10.066, 5.0, 5.0, 10.2, 10.233]
    for seq, t in enumerate(times):
        result = tracker.update(_frame(seq, [_car_at(160 - 8 * seq)], timestamp_s=t))
    assert [t.track_id for t in result.tracks] == [0]


def test_hostile_boxes_are_dropped_and_counted() -> None:
    tracker = CameraTracker(LAYOUT)
    frame = FrameDetections(
        seq=0,
        timestamp_s=0.0,
        boxes_xyxy=np.array([[0, 0, 10, 10], [np.nan, 0, 1, 1], [5, 5, 1, 1], [0, 0, np.inf, 3], [1, 1, 4, 4]]),
        scores=np.array([0.9, 0.9, 0.9, 0.9, 7.0]),
        class_ids=np.zeros(5, np.int64),
    )
    assert tracker.update(frame).dropped_boxes == 4
    with pytest.raises(ValueError, match="differ"):
        tracker.update(FrameDetections(1, 0.1, np.zeros((2, 4)), np.zeros(1), np.zeros(2, np.int64)))


def test_one_car_boxed_as_car_and_as_van_is_one_track_counted_once() -> None:
    # A per-class NMS keeps both boxes of a car that the detector also calls a van.
    tracker = CameraTracker(LAYOUT)
    ids = set()
    for seq in range(16):
        x1, y1, x2, y2 = _car_at(160 - 8 * seq)
        frame = FrameDetections(
            seq=seq,
            timestamp_s=seq / 30,
            boxes_xyxy=np.array([[x1, y1, x2, y2], [x1 + 2, y1 - 2, x2 + 1, y2]], np.float64),
            scores=np.array([0.9, 0.8 if seq % 2 else 0.95]),
            class_ids=np.array([0, 1], np.int64),
        )
        ids |= {t.track_id for t in tracker.update(frame).tracks}
    assert len(ids) == 1
    assert (
        sum(tracker.totals.values()) == 1
        and tracker.totals[("gate", Direction.IN, 0)] + tracker.totals[("gate", Direction.IN, 1)] == 1
    )
