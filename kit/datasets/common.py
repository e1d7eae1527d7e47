"""What every data set format parses to, and the layout rules the formats share."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

from carmesh.v1 import common_pb2

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

SplitValue: TypeAlias = common_pb2.Split
SPLIT_NAMES: Mapping[str, SplitValue] = {
    "train": common_pb2.SPLIT_TRAIN,
    "training": common_pb2.SPLIT_TRAIN,
    "val": common_pb2.SPLIT_VAL,
    "valid": common_pb2.SPLIT_VAL,
    "validation": common_pb2.SPLIT_VAL,
    "test": common_pb2.SPLIT_TEST,
    "testing": common_pb2.SPLIT_TEST,
}

# Image folder -> label folder: YOLO/Ultralytics (images/labels) and KITTI (image_2/label_2).
LABEL_DIR_OF: Mapping[str, str] = {"images": "labels", "image_2": "label_2"}

# Boxes KITTI-style data sets mark as "don't care".
IGNORE_CLASSES = frozenset({"dontcare", "ignore"})


@dataclass
class Box:
    x1: float
    y1: float
    x2: float
    y2: float
    class_name: str
    ignore: bool = False


@dataclass
class Item:
    """One image of a data set with its boxes (class names already mapped)."""

    image: Path
    rel: str  # path relative to the data set root: part of the stable frame id
    split: SplitValue
    boxes: list[Box] = field(default_factory=list)
    # YOLO stores fractions of the image size; the importer scales them once it read the header.
    normalized: bool = False


@dataclass(frozen=True)
class ParseOptions:
    class_map: Mapping[str, str] = field(default_factory=dict)
    class_names: Sequence[str] = ()
    default_split: SplitValue = common_pb2.SPLIT_UNSPECIFIED


@dataclass
class Parsed:
    items: list[Item]
    skipped: list[str]  # "relative/path: reason"
    class_names: list[str]  # mapped names in class_id order
    boxes_dropped: int = 0  # boxes whose class was mapped to ""


def split_of(parts: Sequence[str], default: SplitValue) -> SplitValue:
    """The split named by the deepest folder in ``parts`` that names one, else ``default``."""
    for part in reversed(parts):
        split = SPLIT_NAMES.get(part.lower())
        if split is not None:
            return split
    return default


def item_split(root: Path, rel: Path, default: SplitValue) -> SplitValue:
    # A root that is itself a split folder (.../train) names the split of everything below it.
    return split_of(rel.parts[:-1], split_of([root.name], default))


def image_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not any(s.startswith(".") for s in p.parts)
    )


def label_path(root: Path, image: Path, suffix: str = ".txt") -> Path:
    """images/x.jpg -> labels/x.txt (the deepest image folder is swapped), else x.txt beside the image."""
    parts = list(image.relative_to(root).parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in LABEL_DIR_OF:
            parts[i] = LABEL_DIR_OF[parts[i]]
            return (root.joinpath(*parts)).with_suffix(suffix)
    return image.with_suffix(suffix)


def utf8_text(text: str) -> str:
    """``text`` with the undecodable bytes of a file name (surrogate escapes) shown as ``\\xff``:
    proto strings must be UTF-8, and a message must still say which file it was."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (with ``..`` when outside it): the same wherever the data set is copied."""
    return Path(os.path.relpath(path, root)).as_posix()


def parse_float(token: str, what: str) -> float:
    try:
        value = float(token)
    except ValueError:
        # Never the token itself: messages reach clients, and the file may be anything on the server.
        raise ValueError(f"{what} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{what} is not a finite number")
    return value


def checked_box(x1: float, y1: float, x2: float, y2: float, class_name: str, ignore: bool = False) -> Box:
    if x2 < x1 or y2 < y1:
        raise ValueError("box has x2 < x1 or y2 < y1")
    if not class_name:
        raise ValueError("box has no class name")
    return Box(x1, y1, x2, y2, class_name, ignore)


def finish(
    items: list[Item], skipped: list[str], options: ParseOptions, name_order: Iterable[str] | None = None
) -> Parsed:
    """Applies the class map (renames; "" drops the boxes) and fixes class ids: the order of
    ``name_order`` (a format's id order) when given, else sorted names, so ids are stable."""
    # A name that is not UTF-8 cannot travel in a Frame: skip it, naming it with escapes.
    skipped = [utf8_text(reason) for reason in skipped]
    skipped += [
        f"{utf8_text(item.rel)}: the file name is not valid UTF-8; rename it" for item in items if not is_utf8(item.rel)
    ]
    items = [item for item in items if is_utf8(item.rel)]
    mapping = options.class_map
    dropped = 0
    seen: set[str] = set()
    for item in items:
        kept = []
        for box in item.boxes:
            name = mapping.get(box.class_name, box.class_name)
            if not name:
                dropped += 1
                continue
            box.class_name = name
            seen.add(name)
            kept.append(box)
        item.boxes = kept
    names: list[str] = []
    for source in name_order or ():
        name = mapping.get(source, source)
        if name and name not in names:
            names.append(name)
    names += sorted(seen - set(names))
    items.sort(key=lambda item: item.rel)
    return Parsed(items, skipped, names, dropped)
