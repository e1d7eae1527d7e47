"""A tiny synthetic KITTI data set (coloured rectangles on noise) that a detector learns in a few steps."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def make_kitti(
    root: Path, n_train: int = 8, n_val: int = 2, size_wh: tuple[int, int] = (128, 96), seed: int = 0
) -> Path:
    """Writes root/{train,val}/{images,labels}: "car" boxes are red rectangles, "van" blue (ignore-able)."""
    rng = np.random.default_rng(seed)
    width, height = size_wh
    for split, count in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.integers(60, 120, (height, width, 3), dtype=np.uint8)
            lines = []
            for name, colour in (("car", (0, 0, 230)), ("car", (0, 0, 230)), ("van", (230, 0, 0))):
                w, h = int(rng.integers(14, 30)), int(rng.integers(12, 24))
                x1, y1 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
                cv2.rectangle(image, (x1, y1), (x1 + w - 1, y1 + h - 1), colour, thickness=-1)
                lines.append(f"{name} 0 0 0 {x1} {y1} {x1 + w} {y1 + h} 0 0 0 0 0 0 0")
            cv2.imwrite(str(root / split / "images" / f"{i:04d}.png"), image)
            (root / split / "labels" / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    return root
