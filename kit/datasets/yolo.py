"""YOLO txt: images/ + labels/ (one ``class cx cy w h`` line per box, fractions of the image
size; polygon lines of segmentation sets are reduced to their bounding box). Class names come
from the request, else data.yaml/dataset.yaml ``names``, else classes.txt/obj.names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kit.datasets.common import (
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

_YAML_FILES = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")
_NAME_FILES = ("classes.txt", "obj.names", "classes.names")
# Fractions a little outside 0..1 are rounding; far outside means pixels were written.
_SLACK = 0.01


def _names_from_yaml(path: Path) -> list[str]:
    try:
        doc: Any = yaml.safe_load(path.read_text(errors="replace"))
    except yaml.YAMLError as exc:
        # Only the position: YAML errors quote the offending line.
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise InvalidArgument(f"{path} is not valid YAML{where}") from None
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    if isinstance(names, dict) and names:
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise InvalidArgument(f"{path}: `names` keys must be class ids (0, 1, ...)") from None
        if sorted(by_id) != list(range(len(by_id))):
            raise InvalidArgument(f"{path}: `names` ids must be 0..{len(by_id) - 1} without gaps")
        return [by_id[i] for i in range(len(by_id))]
    raise InvalidArgument(f"{path} has no `names` list: add one or pass class_names")


def class_names(root: Path, given: list[str]) -> list[str]:
    if given:
        return given
    for name in _YAML_FILES:
        if (root / name).is_file():
            return _names_from_yaml(root / name)
    for name in _NAME_FILES:
        if (root / name).is_file():
            names = [line.strip() for line in (root / name).read_text(errors="replace").splitlines() if line.strip()]
            if names:
                return names
    raise InvalidArgument(
        f"YOLO labels store class ids only: pass class_names, or put data.yaml (with `names`) or classes.txt in {root}"
    )


def _read_labels(path: Path, names: list[str]) -> list[Box]:
    boxes = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{path.name} line {number}"
        try:
            class_id = int(tokens[0])
        except ValueError:
            raise ValueError(f"{where}: the class id is not an integer") from None
        if not 0 <= class_id < len(names):
            raise ValueError(f"{where}: class id out of range, there are {len(names)} class names")
        values = [parse_float(t, f"{where}: coordinate") for t in tokens[1:]]
        if len(values) == 4:
            cx, cy, w, h = values
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        elif len(values) >= 6 and len(values) % 2 == 0:
            xs, ys = values[0::2], values[1::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
        else:
            raise ValueError(f"{where}: expected 'class cx cy w h' (or a polygon), got {len(tokens)} values")
        if min(x1, y1) < -_SLACK or max(x2, y2) > 1 + _SLACK:
            raise ValueError(f"{where}: coordinates must be fractions of the image size (0..1)")
        try:
            boxes.append(checked_box(x1, y1, x2, y2, names[class_id]))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return boxes


def parse(root: Path, options: ParseOptions) -> Parsed:
    if not root.is_dir():
        raise InvalidArgument(f"a YOLO data set is a folder (images/ and labels/), {root} is a file")
    names = class_names(root, list(options.class_names))
    items: list[Item] = []
    skipped: list[str] = []
    for image in image_files(root):
        rel = image.relative_to(root)
        labels = label_path(root, image)
        try:
            boxes = _read_labels(labels, names) if labels.is_file() else []
        except (ValueError, OSError) as exc:
            skipped.append(f"{rel}: {exc}")
            continue
        items.append(Item(image, rel.as_posix(), item_split(root, rel, options.default_split), boxes, normalized=True))
    return finish(items, skipped, options, names)
