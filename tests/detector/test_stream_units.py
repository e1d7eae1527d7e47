"""Streaming detection without a broker: commit bookkeeping and settings."""

from __future__ import annotations

import re

import pytest

from detector.config import Settings
from detector.offsets import OffsetTracker
from kit.config import ConfigError, load_settings


def test_commits_stop_at_the_first_frame_still_in_flight():
    tracker: OffsetTracker[str] = OffsetTracker()
    a = [tracker.add("p0", offset) for offset in (10, 11, 12, 13)]
    b = [tracker.add("p1", offset) for offset in (5, 7)]  # offsets of a partition may have gaps
    assert tracker.unfinished == 6
    tracker.done(a[1])
    tracker.done(a[2])
    assert tracker.ready() == {}  # 10 is still in flight: nothing of p0 may be committed
    tracker.done(a[0])
    tracker.done(b[1])
    assert tracker.ready() == {"p0": 13}
    assert tracker.unfinished_in("p0") == 1 and tracker.unfinished_in("p1") == 1
    tracker.done(b[0])
    tracker.done(a[3])
    tracker.done(a[3])  # twice is once
    assert tracker.ready() == {"p0": 14, "p1": 8}
    assert tracker.ready() == {}
    assert tracker.unfinished == 0


def test_dropped_partitions_are_forgotten():
    tracker: OffsetTracker[str] = OffsetTracker()
    first = tracker.add("p0", 1)
    tracker.add("p0", 2)
    tracker.add("p1", 1)
    tracker.drop(["p0"])
    assert tracker.unfinished == 1
    tracker.done(first)  # a task that ends after its partition was revoked changes nothing
    assert tracker.unfinished == 1 and tracker.ready() == {}
    # Reassigned later, the partition starts again from its committed offset.
    tracker.done(tracker.add("p0", 1))
    assert tracker.ready() == {"p0": 2}


def test_offsets_must_increase():
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.add("p0", 4)
    with pytest.raises(ValueError, match="not after 4"):
        tracker.add("p0", 4)


def test_stream_settings():
    cfg = load_settings(
        Settings,
        "CARMESH_DETECTOR_",
        ["--mesh-plaintext", "--stream-consumer", "--no-kafka-idempotence", "--kafka-bootstrap", "k1:9092, k2:9092"],
        environ={"CARMESH_DETECTOR_STREAM_GROUP_ID": "g"},
    )
    assert cfg.stream_consumer and not cfg.kafka_idempotence
    assert (cfg.kafka_bootstrap, cfg.stream_group_id) == ("k1:9092,k2:9092", "g")
    defaults = load_settings(Settings, "CARMESH_DETECTOR_", ["--mesh-plaintext"], environ={})
    assert not defaults.stream_consumer and defaults.kafka_idempotence
    assert defaults.stream_group_id == "carmesh-detector"
    assert defaults.stream_inflight_frames == defaults.max_queue // 2
    small = load_settings(Settings, "CARMESH_DETECTOR_", ["--mesh-plaintext", "--max-queue", "1"], environ={})
    assert small.stream_inflight_frames == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-queue", "16", "--stream-max-inflight", "32"], re.escape("must be <= max_queue (16)")),
        (["--kafka-bootstrap", "kafka"], "expected host:port"),
        (["--stream-group-id", ""], "stream_group_id"),
    ],
)
def test_bad_stream_settings(argv, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(Settings, "CARMESH_DETECTOR_", ["--mesh-plaintext", *argv], environ={})
