"""Labelled data set formats, each parsed to :class:`Parsed` (images, boxes, class names)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kit.datasets import coco, csvfile, kitti, voc, yolo
from kit.datasets.common import Box, Item, Parsed, ParseOptions
from kit.errors import InvalidArgument

__all__ = ["FORMATS", "Box", "Item", "ParseOptions", "Parsed", "parse_dataset"]

FORMATS: dict[str, Callable[[Path, ParseOptions], Parsed]] = {
    "yolo": yolo.parse,
    "coco": coco.parse,
    "voc": voc.parse,
    "kitti": kitti.parse,
    "csv": csvfile.parse,
}


def parse_dataset(fmt: str, path: Path, options: ParseOptions) -> Parsed:
    """Reads the labels (not the images); raises :class:`InvalidArgument` for an unusable layout."""
    parser = FORMATS.get(fmt)
    if parser is None:
        raise InvalidArgument(f"unknown data set format {fmt!r}; use one of {', '.join(FORMATS)}")
    parsed = parser(path, options)
    if not parsed.items and not parsed.skipped:
        raise InvalidArgument(f"no images found for a {fmt} data set at {path}")
    return parsed
