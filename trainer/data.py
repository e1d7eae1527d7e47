"""Labelled images for training: any ``kit.datasets`` format turned into target boxes and ignore regions.

Format detection (``fmt=None``), first match wins:

- ``coco``: a ``*.json`` file at the root or in ``annotations/``;
- ``voc``: ``*.xml`` files anywhere below the root;
- ``csv``: a ``*.csv`` file at the root;
- ``kitti`` / ``yolo``: ``*.txt`` label files; a first label line of at least 8 tokens starting with a class
  *name* is KITTI (``class truncated occluded alpha x1 y1 x2 y2 ...``), 5 numbers is YOLO.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from carmesh.v1 import common_pb2
from kit.datasets import ParseOptions, parse_dataset
from kit.datasets.common import IGNORE_CLASSES, Item

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int32]

_TXT_SKIP = frozenset({"classes.txt", "labels.txt", "readme.txt", "license.txt"})


def _empty_boxes() -> FloatArray:
    return np.zeros((0, 4), np.float32)


def _empty_classes() -> IntArray:
    return np.zeros((0,), np.int32)


@dataclass(frozen=True)
class LabelledImage:
    """One image: target ``boxes`` [K, 4] xyxy in source pixels, ``classes`` [K] (index into the class names)
    and ``ignore`` [J, 4] "don't care" regions (neither positives nor negatives)."""

    path: Path
    boxes: FloatArray = field(default_factory=_empty_boxes)
    classes: IntArray = field(default_factory=_empty_classes)
    ignore: FloatArray = field(default_factory=_empty_boxes)


@dataclass(frozen=True)
class TrainingData:
    class_names: tuple[str, ...]
    train: list[LabelledImage]
    val: list[LabelledImage]


def detect_format(path: Path) -> str:
    """Guesses the data set format of the folder ``path`` (see the module doc)."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return "coco"
        if suffix == ".csv":
            return "csv"
        raise ValueError(f"cannot tell the data set format of the file {path}; pass the format explicitly")
    if any(path.glob("*.json")) or any(path.glob("annotations/*.json")):
        return "coco"
    if any(path.rglob("*.xml")):
        return "voc"
    if any(path.glob("*.csv")):
        return "csv"
    for txt in sorted(path.rglob("*.txt")):
        if txt.name.lower() in _TXT_SKIP:
            continue
        for line in txt.read_text(errors="replace").splitlines():
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) >= 8 and not _is_number(tokens[0]):
                return "kitti"
            if len(tokens) == 5 and all(_is_number(t) for t in tokens):
                return "yolo"
            break
    raise ValueError(
        f"cannot tell the data set format of {path}: expected COCO json, VOC xml, a csv, or KITTI/YOLO txt labels; "
        "pass the format explicitly"
    )


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return int(image.width), int(image.height)


def _labelled(item: Item, index: dict[str, int], ignore_names: frozenset[str]) -> LabelledImage:
    scale_w = scale_h = 1.0
    if item.normalized:
        width, height = _image_size(item.image)
        scale_w, scale_h = float(width), float(height)
    boxes, classes, ignore = [], [], []
    for box in item.boxes:
        xyxy = [box.x1 * scale_w, box.y1 * scale_h, box.x2 * scale_w, box.y2 * scale_h]
        if box.ignore or box.class_name.lower() in ignore_names:
            ignore.append(xyxy)
        elif box.class_name in index:
            boxes.append(xyxy)
            classes.append(index[box.class_name])
    return LabelledImage(
        path=item.image,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        classes=np.asarray(classes, np.int32),
        ignore=np.asarray(ignore, np.float32).reshape(-1, 4),
    )


def load_folder(
    path: Path,
    classes: Sequence[str] | None,
    ignore_classes: Sequence[str],
    fmt: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> TrainingData:
    """Reads a labelled data set: boxes of ``classes`` are targets (``None``: every class that is not ignored,
    sorted), boxes of ``ignore_classes`` and dontcare/ignore boxes become ignore regions, others are dropped.

    The data set's own train/val split folders are used when it has both; otherwise a seeded
    ``val_fraction`` of the images becomes the validation set.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"data set {path} does not exist")
    fmt = fmt or detect_format(path)
    parsed = parse_dataset(fmt, path, ParseOptions())
    if not parsed.items:
        problems = "; ".join(parsed.skipped[:3])
        raise ValueError(f"no readable labelled images in the {fmt} data set at {path}: {problems}")
    ignore_names = frozenset(n.lower() for n in ignore_classes) | IGNORE_CLASSES
    seen = sorted({b.class_name for item in parsed.items for b in item.boxes if not b.ignore})
    if classes is None:
        names = tuple(n for n in seen if n.lower() not in ignore_names)
    else:
        names = tuple(classes)
        missing = [n for n in names if n not in seen]
        if len(missing) == len(names):
            raise ValueError(f"none of the classes {list(names)} occur in {path}; its classes are {seen}")
    if not names:
        raise ValueError(f"no target classes in {path}: its classes are {seen}, all ignored by {sorted(ignore_names)}")
    index = {n: i for i, n in enumerate(names)}
    images = [_labelled(item, index, ignore_names) for item in parsed.items]
    splits = [item.split for item in parsed.items]
    train = [im for im, s in zip(images, splits, strict=True) if s == common_pb2.SPLIT_TRAIN]
    val = [im for im, s in zip(images, splits, strict=True) if s == common_pb2.SPLIT_VAL]
    if not train or not val:
        # No usable split folders: a seeded shuffle keeps the split stable across runs and workers.
        order = list(range(len(images)))
        random.Random(seed).shuffle(order)
        n_val = round(len(images) * val_fraction) if len(images) > 1 else 0
        if val_fraction > 0 and len(images) > 1:
            n_val = min(max(n_val, 1), len(images) - 1)
        val = [images[i] for i in sorted(order[:n_val])]
        train = [images[i] for i in sorted(order[n_val:])]
    if not any(len(im.boxes) for im in train):
        raise ValueError(f"the training split of {path} has no boxes of the classes {list(names)}")
    return TrainingData(class_names=names, train=train, val=val)
