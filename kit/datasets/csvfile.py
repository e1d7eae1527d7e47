"""CSV: one box per row, ``image,xmin,ymin,xmax,ymax[,class]`` in pixels, with or without a
header (a header may name the columns in any order: image/filename/path, xmin/x1,
ymin/y1, xmax/x2, ymax/y2, class/label/name, split). A row without coordinates lists an
image with no boxes. Image paths are relative to the CSV's folder (or its images/)."""

from __future__ import annotations

import csv
from pathlib import Path

from kit.datasets.common import (
    SPLIT_NAMES,
    Box,
    Item,
    Parsed,
    ParseOptions,
    checked_box,
    finish,
    item_split,
    parse_float,
    relative,
)
from kit.errors import InvalidArgument

_ALIASES = {
    "image": ("image", "filename", "file", "file_name", "path", "image_path", "img", "image_id"),
    "x1": ("xmin", "x1", "left", "x_min"),
    "y1": ("ymin", "y1", "top", "y_min"),
    "x2": ("xmax", "x2", "right", "x_max"),
    "y2": ("ymax", "y2", "bottom", "y_max"),
    "class": ("class", "label", "class_name", "name", "category"),
    "split": ("split", "subset"),
}
_POSITIONAL = {"image": 0, "x1": 1, "y1": 2, "x2": 3, "y2": 4, "class": 5}


def _columns(header: list[str]) -> dict[str, int] | None:
    """Column positions when the first row is a header, None when it is data."""
    lowered = [h.strip().lower() for h in header]
    if not any(h in _ALIASES["image"] for h in lowered):
        return None
    columns = {}
    for key, aliases in _ALIASES.items():
        for index, name in enumerate(lowered):
            if name in aliases:
                columns[key] = index
                break
    missing = [k for k in ("x1", "y1", "x2", "y2") if k not in columns]
    if missing:
        raise InvalidArgument(
            f"the CSV header (row 1) lacks box columns for {', '.join(missing)} (e.g. xmin,ymin,xmax,ymax)"
        )
    return columns


def _cell(row: list[str], columns: dict[str, int], key: str) -> str:
    index = columns.get(key)
    return row[index].strip() if index is not None and index < len(row) else ""


def parse(path: Path, options: ParseOptions) -> Parsed:
    if not path.is_file():
        raise InvalidArgument(f"a CSV data set is the .csv file itself, {path} is a folder")
    root = path.parent
    default_class = options.class_names[0] if options.class_names else "object"
    with path.open(newline="", errors="replace") as handle:
        reader = csv.reader(handle)
        try:
            rows = [row for row in reader if any(cell.strip() for cell in row)]
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit() (128 KiB): not a box list
            raise InvalidArgument(
                f"{path}: line {reader.line_num} cannot be read as CSV ({exc}); "
                "a CSV data set has one short row per box: image,xmin,ymin,xmax,ymax[,class]"
            ) from None
    if not rows:
        raise InvalidArgument(f"{path} has no rows")
    columns = _columns(rows[0])
    if columns is None:
        columns = _POSITIONAL
    else:
        rows = rows[1:]
    items: dict[str, Item] = {}
    bad: dict[str, str] = {}
    for number, row in enumerate(rows, start=2 if columns is not _POSITIONAL else 1):
        name = _cell(row, columns, "image")
        if not name:
            bad[f"row {number}"] = "no image path"
            continue
        image = next((p for p in (root / name, root / "images" / name) if p.is_file()), None)
        if image is None:
            # Keyed by row, not by the cell: a name that is no file may be any text (the file may be a secret).
            bad[f"row {number}"] = f"image not found in {root} or {root / 'images'}"
            continue
        key = relative(image, root)
        if key in bad:
            continue
        split_name = _cell(row, columns, "split").lower()
        split = SPLIT_NAMES.get(split_name) if split_name else None
        item = items.setdefault(
            key, Item(image, key, split if split is not None else item_split(root, Path(key), options.default_split))
        )
        coords = [_cell(row, columns, k) for k in ("x1", "y1", "x2", "y2")]
        if not any(coords):
            continue  # an image listed without boxes
        try:
            x1, y1, x2, y2 = (parse_float(c, "coordinate") for c in coords)
            box: Box = checked_box(x1, y1, x2, y2, _cell(row, columns, "class") or default_class)
        except ValueError as exc:
            # One bad row makes the image's labels incomplete: skip the image, not only the row.
            bad[key] = f"row {number}: {exc}"
            items.pop(key, None)
            continue
        item.boxes.append(box)
    skipped = [f"{name}: {reason}" for name, reason in bad.items()]
    return finish(list(items.values()), skipped, options)
