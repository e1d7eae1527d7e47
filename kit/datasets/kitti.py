"""KITTI txt: images/ + labels/ (or image_2/ + label_2/), one
``class truncated occluded alpha x1 y1 x2 y2 ...`` line per box in pixels; the split comes
from the folder names (train/, val/, ...); DontCare/ignore boxes are marked ignore."""

from __future__ import annotations

from pathlib import Path

from kit.datasets.common import (
    IGNORE_CLASSES,
    Box,
    Item,
    Parsed,
    ParseOptions,
    checked_box,
    finish,
    image_files,
    item_split,
    label_path,
    parse_float,
)
from kit.errors import InvalidArgument


def _read_labels(path: Path) -> list[Box]:
    boxes = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{path.name} line {number}"
        if len(tokens) < 8:
            expected = "'class truncated occluded alpha x1 y1 x2 y2 ...'"
            raise ValueError(f"{where}: expected {expected}, got {len(tokens)} fields")
        name = tokens[0]
        try:
            x1, y1, x2, y2 = (parse_float(t, f"{where}: coordinate") for t in tokens[4:8])
            boxes.append(checked_box(x1, y1, x2, y2, name, ignore=name.lower() in IGNORE_CLASSES))
        except ValueError as exc:
            raise ValueError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
    return boxes


def parse(root: Path, options: ParseOptions) -> Parsed:
    if not root.is_dir():
        raise InvalidArgument(f"a KITTI data set is a folder (images/ and labels/ per split), {root} is a file")
    items: list[Item] = []
    skipped: list[str] = []
    for image in image_files(root):
        rel = image.relative_to(root)
        labels = label_path(root, image)
        try:
            boxes = _read_labels(labels) if labels.is_file() else []
        except (ValueError, OSError) as exc:
            skipped.append(f"{rel}: {exc}")
            continue
        items.append(Item(image, rel.as_posix(), item_split(root, rel, options.default_split), boxes))
    return finish(items, skipped, options)
