"""Pascal VOC xml: Annotations/*.xml (or *.xml anywhere below the root) naming an image in
JPEGImages/ (or beside the xml), objects with ``name`` and ``bndbox`` in pixels; difficult
objects are marked ignore (VOC evaluation does not count them). Splits come from
ImageSets/Main/{train,val,test}.txt when present, else from folder names."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from kit.datasets.common import (
    SPLIT_NAMES,
    Box,
    Item,
    Parsed,
    ParseOptions,
    SplitValue,
    checked_box,
    finish,
    item_split,
    parse_float,
    relative,
)
from kit.errors import InvalidArgument

_MAX_XML_BYTES = 4 * 1024 * 1024


def _xml_files(root: Path) -> list[Path]:
    annotations = root / "Annotations"
    files = sorted(annotations.glob("*.xml")) if annotations.is_dir() else sorted(root.rglob("*.xml"))
    if not files:
        raise InvalidArgument(f"no Pascal VOC annotation (*.xml) under {root} (expected Annotations/*.xml)")
    return files


def _image_sets(root: Path) -> dict[str, SplitValue]:
    """Image stem -> split from ImageSets/Main/<split>.txt (trainval only when train/val are absent)."""
    main = root / "ImageSets" / "Main"
    found: dict[str, SplitValue] = {}
    if not main.is_dir():
        return found
    for name in ("trainval", "train", "val", "test"):
        listing = main / f"{name}.txt"
        if not listing.is_file():
            continue
        split = SPLIT_NAMES.get(name, SPLIT_NAMES["train"])
        for line in listing.read_text(errors="replace").splitlines():
            if line.split():
                found[line.split()[0]] = split
    return found


def _text(node: ET.Element, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{where}: missing <{tag}>")
    return child.text.strip()


def _objects(doc: ET.Element, where: str) -> list[Box]:
    boxes = []
    for index, obj in enumerate(doc.findall("object")):
        at = f"{where} object {index}"
        name = _text(obj, "name", at)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{at}: missing <bndbox>")
        tags = ("xmin", "ymin", "xmax", "ymax")
        x1, y1, x2, y2 = (parse_float(_text(bndbox, tag, at), f"{at} {tag}") for tag in tags)
        difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true")
        try:
            boxes.append(checked_box(x1, y1, x2, y2, name, ignore=difficult))
        except ValueError as exc:
            raise ValueError(f"{at}: {exc}") from None
    return boxes


def _image_of(root: Path, xml: Path, filename: str) -> Path | None:
    name = Path(filename).name  # never let an annotation point elsewhere with ../
    candidates = [root / "JPEGImages" / name, xml.parent / name, xml.parent.parent / "JPEGImages" / name]
    candidates += [xml.parent.parent / "images" / name]
    return next((c for c in candidates if c.is_file()), None)


def parse(root: Path, options: ParseOptions) -> Parsed:
    if not root.is_dir():
        raise InvalidArgument(f"a Pascal VOC data set is a folder (Annotations/ and JPEGImages/), {root} is a file")
    sets = _image_sets(root)
    items: list[Item] = []
    skipped: list[str] = []
    for xml in _xml_files(root):
        where = relative(xml, root)
        try:
            if xml.stat().st_size > _MAX_XML_BYTES:
                raise ValueError(f"larger than {_MAX_XML_BYTES} bytes")
            doc = ET.parse(xml).getroot()
            filename = doc.findtext("filename") or f"{xml.stem}.jpg"
            image = _image_of(root, xml, filename.strip())
            if image is None:
                raise ValueError("the image its <filename> names is not in JPEGImages/ or beside the xml")
            boxes = _objects(doc, where)
        except (ET.ParseError, ValueError, OSError) as exc:
            skipped.append(f"{where}: {exc}")
            continue
        rel = Path(relative(image, root))
        split = sets.get(image.stem, item_split(root, rel, options.default_split))
        items.append(Item(image, rel.as_posix(), split, boxes))
    return finish(items, skipped, options)
