"""COCO json: ``images`` (file_name), ``annotations`` (image_id, category_id, bbox [x, y, w, h]
in pixels, iscrowd -> ignore) and ``categories``. The path is the json file, or a folder whose
*.json (or annotations/*.json) files are read, one split each when their name says which."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kit.datasets.common import (
    SPLIT_NAMES,
    Box,
    Item,
    Parsed,
    ParseOptions,
    SplitValue,
    checked_box,
    finish,
    parse_float,
    relative,
)
from kit.errors import InvalidArgument

# What a COCO id may be (JSON numbers and strings); a missing id is None.
_ID_TYPES = (int, float, str, type(None))


def _id_text(value: object) -> str:
    """An annotation's id for a skip reason: a scalar as is, anything else only by its type."""
    return repr(value) if isinstance(value, (int, float, str, type(None))) else f"<{type(value).__name__}>"


def _json_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.json")) + sorted((path / "annotations").glob("*.json"))
    if not files:
        raise InvalidArgument(f"no COCO annotation file (*.json) in {path} or {path / 'annotations'}")
    return files


def _split_of_file(path: Path, default: SplitValue) -> SplitValue:
    # instances_train2017.json, val.json, ... name their split.
    words = path.stem.lower().replace("-", "_").split("_")
    for word in reversed(words):
        split = SPLIT_NAMES.get(word.rstrip("0123456789"))
        if split is not None:
            return split
    return default


def _image_dirs(ann: Path) -> list[Path]:
    base = ann.parent
    stem = ann.stem.lower()
    named = stem.split("_", 1)[1] if "_" in stem else stem  # instances_train2017 -> train2017
    return [base, base / "images", base.parent / "images", base.parent, base.parent / named, base / named]


def _load(ann: Path) -> dict[str, Any]:
    try:
        doc = json.loads(ann.read_text(errors="replace"))
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{ann} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise InvalidArgument(f"{ann} is not a COCO annotation file (no `images` list)")
    return doc


def _categories(doc: dict[str, Any], ann: Path) -> dict[int, str]:
    try:
        return {int(c["id"]): str(c["name"]) for c in doc.get("categories") or []}
    except (KeyError, TypeError, ValueError):
        raise InvalidArgument(f"{ann}: every category needs an integer `id` and a `name`") from None


def _id(raw: dict[str, Any]) -> str:
    """An annotation's id when it is a number; never other text of the file (messages reach clients)."""
    value = raw.get("id")
    return str(value) if isinstance(value, int) else "without an integer id"


def _box(raw: dict[str, Any], categories: dict[int, str]) -> Box:
    try:
        category = int(raw["category_id"])
        x, y, w, h = (parse_float(str(v), "bbox value") for v in raw["bbox"])
    except (KeyError, TypeError, ValueError) as exc:
        # Not the exception's text: int() and float() quote the bad value.
        what = f"has no {exc}" if isinstance(exc, KeyError) else "has a bad value"
        raise ValueError(
            f"annotation {_id(raw)}: {what}; it needs an integer category_id and bbox [x, y, w, h] of numbers"
        ) from None
    if category not in categories:
        raise ValueError(f"annotation {_id(raw)}: its category_id is not in `categories`")
    return checked_box(x, y, x + w, y + h, categories[category], ignore=bool(raw.get("iscrowd")))


def parse(path: Path, options: ParseOptions) -> Parsed:
    items: list[Item] = []
    skipped: list[str] = []
    order: dict[int, str] = {}
    root = path if path.is_dir() else path.parent
    for ann in _json_files(path):
        doc = _load(ann)
        categories = _categories(doc, ann)
        order.update(categories)
        split = _split_of_file(ann, options.default_split)
        by_image: dict[Any, list[dict[str, Any]]] = {}
        for raw in doc.get("annotations") or []:
            if isinstance(raw, dict):
                # JSON gives lists and objects too, which cannot be ids (nor dict keys).
                image_id = raw.get("image_id")
                if not isinstance(image_id, _ID_TYPES):
                    skipped.append(
                        f"{ann.name}: annotation {_id_text(raw.get('id'))}: image_id must be a number or a string, "
                        f"not {type(image_id).__name__}"
                    )
                    continue
                by_image.setdefault(image_id, []).append(raw)
        dirs = _image_dirs(ann)
        for image in doc["images"]:
            name = str(image.get("file_name", "")) if isinstance(image, dict) else ""
            if not name:
                skipped.append(f"{ann.name}: an image entry has no file_name")
                continue
            found = next((d / name for d in dirs if (d / name).is_file()), None)
            if found is None:
                # Not the name: one that is no file may be any text.
                skipped.append(f"{ann.name}: an image's file is not found (looked in {', '.join(map(str, dirs))})")
                continue
            image_id = image.get("id")
            if not isinstance(image_id, _ID_TYPES):
                skipped.append(f"{name}: the image's id must be a number or a string, not {type(image_id).__name__}")
                continue
            try:
                boxes = [_box(raw, categories) for raw in by_image.get(image_id, [])]
            except ValueError as exc:
                skipped.append(f"{name}: {exc}")
                continue
            items.append(Item(found, relative(found, root), split, boxes))
    return finish(items, skipped, options, [order[k] for k in sorted(order)])
