"""Checkpoints: a tracker restored from JSON continues frame for frame like one that never
stopped (the ground for the mesh tracker's restart and rebalance without lost or double counts),
and a damaged or foreign checkpoint is refused."""

from __future__ import annotations

import json

import pytest

from tracking.core import CameraTracker
from tracking.scenario import DetectionNoise, make_scenario, simulate_detections
from tracking.state import StateError, dump, restore


@pytest.mark.parametrize("cut", [1, 150, 301, 470])
def test_a_restored_tracker_continues_exactly(cut: int) -> None:
    scenario = make_scenario(1)
    frames = simulate_detections(scenario.truth(), DetectionNoise(), seed=1)
    straight = CameraTracker(scenario.layout)
    expected = [straight.update(f) for f in frames]

    first = CameraTracker(scenario.layout)
    for f in frames[:cut]:
        first.update(f)
    checkpoint = json.loads(json.dumps(first.checkpoint()))  # what PostgreSQL stores
    second = CameraTracker.from_checkpoint(scenario.layout, checkpoint)
    assert [second.update(f) for f in frames[cut:]] == expected[cut:]
    assert second.totals == straight.totals == scenario.true_counts()
    assert second.stats == straight.stats
    assert second.occupancy("bay") == straight.occupancy("bay")


def test_a_restart_without_the_state_would_miscount() -> None:
    """Guards the guard: starting fresh mid-stream loses the crossings of cars already in view."""
    scenario = make_scenario(1)
    frames = simulate_detections(scenario.truth(), DetectionNoise(), seed=1)
    first, fresh = CameraTracker(scenario.layout), CameraTracker(scenario.layout)
    for f in frames[:300]:
        first.update(f)
    for f in frames[300:]:
        fresh.update(f)
    assert first.totals + fresh.totals != scenario.true_counts()


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.update(format=99),
        lambda s: s["bytetrack"].update(tracks={"list": [{"object": "os:system", "fields": {}}]}),
        lambda s: s["bytetrack"]["tracks"]["list"][0]["fields"].update(__class__={"list": []}),
        lambda s: s["bytetrack"].update(_next_track_id={"ndarray": [1], "dtype": "object", "shape": [1]}),
        lambda s: s.pop("counter"),
        lambda s: s["tracks"].update({"x": [1, 2]}),
    ],
)
def test_damaged_checkpoints_are_refused(damage) -> None:
    scenario = make_scenario(0)
    tracker = CameraTracker(scenario.layout)
    for f in simulate_detections(scenario.truth(), DetectionNoise(), seed=0)[:60]:
        tracker.update(f)
    state = json.loads(json.dumps(dump(tracker)))
    restore(CameraTracker(scenario.layout), state)  # intact, it loads
    damage(state)
    with pytest.raises(StateError):
        restore(CameraTracker(scenario.layout), state)
