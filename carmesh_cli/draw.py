"""Annotated copies of images: boxes, class names and scores drawn with Pillow."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

# Distinct, readable colours, one per class id (cycled).
_PALETTE = (
    (255, 56, 56),
    (255, 157, 151),
    (255, 112, 31),
    (255, 178, 29),
    (207, 210, 49),
    (72, 249, 10),
    (146, 204, 23),
    (61, 219, 134),
    (26, 147, 52),
    (0, 212, 187),
    (44, 153, 168),
    (0, 194, 255),
    (52, 69, 147),
    (100, 115, 255),
    (0, 24, 236),
    (132, 56, 255),
    (82, 0, 133),
    (203, 56, 255),
)


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    score: float
    class_id: int


def _open(image_bytes: bytes, size: tuple[int, int] | None) -> Image.Image:
    image: Image.Image = Image.open(io.BytesIO(image_bytes))
    # Boxes are in the detector's pixel frame; if it honoured EXIF orientation, do so too.
    if size is not None and image.size != size:
        rotated = ImageOps.exif_transpose(image)
        if rotated is not None and rotated.size == size:
            image = rotated
    return image.convert("RGB")


def annotate(image_bytes: bytes, boxes: Sequence[Box], size: tuple[int, int] | None = None) -> Image.Image:
    """The image with every box drawn; ``size`` is the (width, height) the detector reported."""
    image = _open(image_bytes, size)
    draw = ImageDraw.Draw(image)
    line = max(2, round(min(image.size) / 300))
    font = ImageFont.load_default(size=max(12, round(min(image.size) / 45)))
    for box in boxes:
        colour = _PALETTE[box.class_id % len(_PALETTE)]
        draw.rectangle((box.x1, box.y1, box.x2, box.y2), outline=colour, width=line)
        text = f"{box.label} {box.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        width, height = right - left + 2 * line, bottom - top + 2 * line
        # The label sits above the box, or inside it when the box touches the top edge.
        y = box.y1 - height if box.y1 - height >= 0 else box.y1
        draw.rectangle((box.x1, y, box.x1 + width, y + height), fill=colour)
        draw.text((box.x1 + line - left, y + line - top), text, fill=(255, 255, 255), font=font)
    return image


def save_jpeg(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=90)
