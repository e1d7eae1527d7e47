"""Small labelled data sets written by the tests in each format, from one ground truth made of
real apollo frames (downscaled) and known boxes."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from carmesh.v1 import common_pb2
from tests.ingestor.support import jpeg, png

NAMES = ["car", "truck", "person", "van"]


@dataclass(frozen=True)
class Truth:
    name: str  # file stem
    split: str  # "train" / "val"
    png: bool
    boxes: tuple[tuple[str, float, float, float, float], ...]  # class, x1, y1, x2, y2 in pixels


TRUTH = [
    Truth("a", "train", False, (("car", 10, 20, 110, 90), ("truck", 200, 50, 400, 300))),
    Truth("b", "train", True, (("car", 30, 40, 90, 80), ("person", 500, 100, 540, 200), ("van", 0, 0, 64, 36))),
    Truth("c", "val", False, ()),
    Truth("d", "val", False, (("van", 300, 150, 420, 260),)),
]
SPLITS = {"train": common_pb2.SPLIT_TRAIN, "val": common_pb2.SPLIT_VAL}
# van is renamed to car, person is dropped.
CLASS_MAP = {"van": "car", "person": ""}


def expected_counts(class_map: dict[str, str] | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for truth in TRUTH:
        for box in truth.boxes:
            name = (class_map or {}).get(box[0], box[0])
            if name:
                counts[name] = counts.get(name, 0) + 1
    return counts


def expected_boxes(stem: str, class_map: dict[str, str] | None = None) -> list[tuple[str, float, float, float, float]]:
    truth = next(t for t in TRUTH if t.name == stem)
    out = []
    for name, *coords in truth.boxes:
        mapped = (class_map or {}).get(name, name)
        if mapped:
            out.append((mapped, *coords))
    return sorted(out)  # type: ignore[arg-type]


def _encoded(truth: Truth, images: list[np.ndarray]) -> bytes:
    image = images[TRUTH.index(truth) % len(images)]
    return png(image) if truth.png else jpeg(image)


def file_name(truth: Truth) -> str:
    return f"{truth.name}.png" if truth.png else f"{truth.name}.jpg"


def write_yolo(root: Path, images: list[np.ndarray], with_yaml: bool = True) -> dict[str, bytes]:
    """images/<split>/x.jpg + labels/<split>/x.txt; returns file name -> bytes written."""
    written = {}
    for truth in TRUTH:
        h, w = images[0].shape[:2]
        data = _encoded(truth, images)
        (root / "images" / truth.split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / truth.split).mkdir(parents=True, exist_ok=True)
        (root / "images" / truth.split / file_name(truth)).write_bytes(data)
        written[file_name(truth)] = data
        lines = [
            f"{NAMES.index(c)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
            for c, x1, y1, x2, y2 in truth.boxes
        ]
        if truth.boxes or truth.name != "c":  # c has no label file at all: a background image
            (root / "labels" / truth.split / f"{truth.name}.txt").write_text("\n".join(lines) + "\n")
    if with_yaml:
        (root / "data.yaml").write_text(
            "path: .\ntrain: images/train\nval: images/val\nnames:\n"
            + "".join(f"  {i}: {n}\n" for i, n in enumerate(NAMES))
        )
    return written


def write_coco(root: Path, images: list[np.ndarray]) -> dict[str, bytes]:
    """train.json + val.json beside images/; categories with COCO-like sparse ids."""
    written = {}
    (root / "images").mkdir(parents=True, exist_ok=True)
    categories = [{"id": 3 + 2 * i, "name": n} for i, n in enumerate(NAMES)]
    cat_id = {c["name"]: c["id"] for c in categories}
    h, w = images[0].shape[:2]
    for split in ("train", "val"):
        doc: dict[str, list[dict[str, object]]] = {"images": [], "annotations": [], "categories": categories}
        for index, truth in enumerate(TRUTH):
            if truth.split != split:
                continue
            data = _encoded(truth, images)
            (root / "images" / file_name(truth)).write_bytes(data)
            written[file_name(truth)] = data
            doc["images"].append({"id": 100 + index, "file_name": file_name(truth), "width": w, "height": h})
            for c, x1, y1, x2, y2 in truth.boxes:
                doc["annotations"].append(
                    {
                        "id": len(doc["annotations"]) + 1,
                        "image_id": 100 + index,
                        "category_id": cat_id[c],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
        (root / f"instances_{split}.json").write_text(json.dumps(doc))
    return written


def write_voc(root: Path, images: list[np.ndarray]) -> dict[str, bytes]:
    written = {}
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    h, w = images[0].shape[:2]
    sets: dict[str, list[str]] = {"train": [], "val": []}
    for truth in TRUTH:
        data = _encoded(truth, images)
        (root / "JPEGImages" / file_name(truth)).write_bytes(data)
        written[file_name(truth)] = data
        sets[truth.split].append(truth.name)
        objects = "".join(
            f"<object><name>{escape(c)}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for c, x1, y1, x2, y2 in truth.boxes
        )
        (root / "Annotations" / f"{truth.name}.xml").write_text(
            f"<annotation><folder>JPEGImages</folder><filename>{file_name(truth)}</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>"
        )
    for split, stems in sets.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return written


def write_csv(root: Path, images: list[np.ndarray], header: bool = True) -> tuple[Path, dict[str, bytes]]:
    """labels.csv beside images/; with a header (filename,xmin,...,class,split) or positional."""
    written = {}
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: list[list[object]] = []
    for truth in TRUTH:
        data = _encoded(truth, images)
        (root / "images" / file_name(truth)).write_bytes(data)
        written[file_name(truth)] = data
        if not truth.boxes:
            rows.append([f"images/{file_name(truth)}", "", "", "", "", ""] + ([truth.split] if header else []))
        for c, x1, y1, x2, y2 in truth.boxes:
            rows.append([f"images/{file_name(truth)}", x1, y1, x2, y2, c] + ([truth.split] if header else []))
    path = root / "labels.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(["filename", "xmin", "ymin", "xmax", "ymax", "class", "split"])
        writer.writerows(rows)
    return path, written
