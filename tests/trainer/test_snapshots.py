"""The local cache of a dataset snapshot is a COCO folder the trainer's loader reads back exactly."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from carmesh.v1 import common_pb2
from trainer.data import load_folder
from trainer.errors import BadRequest
from trainer.snapshots import CocoWriter, SnapshotRef, looks_like_folder, parse_ref


def frame(frame_id: str, split: int, boxes: list[tuple[str, float, float, float, float, bool]]) -> common_pb2.Frame:
    ok, data = cv2.imencode(".jpg", np.full((90, 160, 3), 100, np.uint8))
    assert ok
    return common_pb2.Frame(
        frame_id=frame_id,
        encoding=common_pb2.IMAGE_ENCODING_JPEG,
        image=data.tobytes(),
        width=160,
        height=90,
        split=split,
        annotations=[
            common_pb2.Annotation(box=common_pb2.BoundingBox(x1=x1, y1=y1, x2=x2, y2=y2), class_name=name, ignore=ig)
            for name, x1, y1, x2, y2, ig in boxes
        ],
    )


def test_a_cached_snapshot_reads_back_with_splits_boxes_and_dont_care_regions(tmp_path: Path) -> None:
    writer = CocoWriter(tmp_path / "snap")
    writer.add(frame("cam/1", common_pb2.SPLIT_TRAIN, [("car", 10, 20, 50, 60, False), ("van", 60, 10, 90, 40, False)]))
    writer.add(
        frame("cam/2", common_pb2.SPLIT_TRAIN, [("car", 1, 2, 30, 40, False), ("ignore", 100, 0, 160, 90, True)])
    )
    writer.add(frame("cam/3", common_pb2.SPLIT_VAL, [("car", 5, 5, 25, 35, False)]))
    writer.finish(SnapshotRef("snap", 1))

    data = load_folder(tmp_path / "snap", classes=["car"], ignore_classes=["van"], fmt="coco")
    assert data.class_names == ("car",)
    assert len(data.train) == 2 and len(data.val) == 1
    by_name = {im.path.name: im for im in data.train}
    first, second = by_name["cam_1.jpg"], by_name["cam_2.jpg"]
    np.testing.assert_allclose(first.boxes, [[10, 20, 50, 60]])
    np.testing.assert_allclose(first.ignore, [[60, 10, 90, 40]])  # van: don't care
    np.testing.assert_allclose(second.ignore, [[100, 0, 160, 90]])  # the frame's own ignore region
    np.testing.assert_allclose(data.val[0].boxes, [[5, 5, 25, 35]])


def test_dataset_references() -> None:
    assert parse_ref("apollo") == SnapshotRef("apollo", 0)
    assert parse_ref("apollo:3") == SnapshotRef("apollo", 3)
    assert str(parse_ref("apollo:3")) == "apollo:3"
    for bad in ("apollo:x", ":3", "a b"):
        with pytest.raises(BadRequest):
            parse_ref(bad)
    assert looks_like_folder("./data") and looks_like_folder("/srv/data") and not looks_like_folder("apollo")
