"""Dataset namespaces (issue 16, hole 4): the namespace a frame carries is stored, and a snapshot
filter keeps it (a filter stored before namespaces existed reads as the operator's)."""

from __future__ import annotations

import json

from carmesh.v1 import common_pb2, feature_pb2
from feature_service.datasets import SnapshotFilter, SnapshotSpec, check_spec
from feature_service.server import filter_from_proto, filter_to_proto
from feature_service.validation import StoredFrame, validate
from tests.feature_service.test_units import LIMITS, _jpeg


def test_a_frames_namespace_is_kept() -> None:
    frame = common_pb2.Frame(frame_id="f-1", camera_id="cam-1", image=_jpeg(), dataset="apollo")
    frame.dataset_namespace = "alice"
    stored = validate(frame, 1_700_000_000_000, LIMITS)
    assert isinstance(stored, StoredFrame) and (stored.dataset, stored.dataset_namespace) == ("apollo", "alice")
    frame.dataset_namespace = "a\x00b"
    assert not isinstance(validate(frame, 1_700_000_000_000, LIMITS), StoredFrame)


def test_the_snapshot_filter_carries_the_namespace() -> None:
    message = feature_pb2.DatasetFilter(datasets=["apollo"], dataset_namespace=" alice ")
    flt = check_spec(SnapshotSpec("s", filter_from_proto(message))).filter
    assert flt.dataset_namespace == "alice" and "dataset_namespace=alice" in flt.describe()
    assert SnapshotFilter.from_json(flt.to_json()) == flt
    assert filter_to_proto(flt).dataset_namespace == "alice"
    old = json.loads(SnapshotFilter(datasets=("apollo",)).to_json())
    del old["dataset_namespace"]
    assert SnapshotFilter.from_json(json.dumps(old)).dataset_namespace == ""
