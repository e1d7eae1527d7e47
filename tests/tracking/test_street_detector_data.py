"""bench.street_detector's data set: rendered frames of the street scene with KITTI labels from
the truth, readable by the trainer's loader, on seeds the test videos do not use."""

from __future__ import annotations

from pathlib import Path

import cv2

from bench.street_detector import MIN_VISIBLE, TRAIN_SEEDS, VAL_SEEDS, Split, write_dataset
from tracking.scenario import CLASS_NAMES, HEIGHT, WIDTH, make_scenario
from trainer.data import load_folder


def test_labels_are_the_truth_and_the_trainer_reads_them(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "data", (Split("train", (100,), 60), Split("val", (200,), 120)), frames=540)
    truth = make_scenario(100).truth()
    labels = sorted((root / "train" / "labels").glob("*.txt"))
    assert [p.stem for p in labels] == [f"s100-f{f:04d}" for f in range(0, 540, 60)]
    for path in labels:
        frame = int(path.stem.rsplit("f", 1)[1])
        rows = [line.split() for line in path.read_text().splitlines()]
        expected = [
            (CLASS_NAMES[t.class_id] if t.visibility >= MIN_VISIBLE else "DontCare", *t.box_xyxy) for t in truth[frame]
        ]
        assert [(r[0], *(float(v) for v in r[4:8])) for r in rows] == [
            (name, *(round(c, 2) for c in box)) for name, *box in expected
        ]
        image = cv2.imread(str(root / "train" / "images" / f"{path.stem}.jpg"))
        assert image is not None and image.shape == (HEIGHT, WIDTH, 3)
    data = load_folder(root, list(CLASS_NAMES), [])
    assert (len(data.train), len(data.val)) == (9, 5) and data.class_names == CLASS_NAMES
    assert sum(len(im.boxes) for im in data.train) > 0


def test_the_detector_never_sees_the_test_videos_seeds() -> None:
    # tests/tracking, tests/tracker and the mesh test use seeds 0..9.
    assert not set(range(10)) & (set(TRAIN_SEEDS) | set(VAL_SEEDS))
    assert not set(TRAIN_SEEDS) & set(VAL_SEEDS)
