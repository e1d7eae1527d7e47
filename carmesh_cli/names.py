"""Class-name lists for ``models import --names``: a preset, a file, or a comma-separated list."""

from __future__ import annotations

from pathlib import Path

# The 80 COCO detection classes in the order COCO-trained YOLO models emit them (index 2 is `car`).
COCO_NAMES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)

PRESETS: dict[str, tuple[str, ...]] = {"coco": COCO_NAMES}


class NamesError(ValueError):
    """A class-name list that cannot be used; the message says why."""


def parse_names(spec: str) -> list[str]:
    """``coco`` (a preset), a file with one name per line (``#`` comments), or ``a,b,c``."""
    if spec in PRESETS:
        names = list(PRESETS[spec])
    elif Path(spec).is_file():
        try:
            text = Path(spec).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise NamesError(f"cannot read class names from {spec}: {exc}") from exc
        names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        names = [name for name in names if name]
    else:
        names = [name.strip() for name in spec.split(",")]
        if any(not name for name in names):
            raise NamesError(f"--names {spec!r}: empty class name (use a,b,c, a file, or one of {sorted(PRESETS)})")
    if not names:
        raise NamesError(f"--names {spec!r}: no class names")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise NamesError(f"--names {spec!r}: duplicate class names {duplicates}")
    return names
