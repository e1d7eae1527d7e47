"""The letterbox: an image resized keeping its aspect ratio and padded to a model's input size, and
the inverse mapping of boxes back to the source's pixels.

One implementation for the detector (what it serves) and the trainer (what it evaluates and checks
the export with), so a model is scored on exactly the pixels it will be served. numpy and OpenCV only.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

# YOLO's grey: padding, and regions the trainer masks out, read as "nothing here".
PAD_VALUE = 114
UInt8Image = npt.NDArray[np.uint8]
FloatBoxes = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Letterbox:
    """How a source image was placed on the model input: input = source * scale + pad."""

    scale: float
    pad_x: float
    pad_y: float
    source_width: int
    source_height: int

    def to_source(self, boxes: npt.ArrayLike) -> FloatBoxes:
        """Input-pixel boxes [N, 4] xyxy -> source-image pixels (float32), clipped to the source."""
        boxes = np.asarray(boxes)
        out = np.empty(boxes.shape, np.float32)
        out[:, [0, 2]] = (boxes[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (boxes[:, [1, 3]] - self.pad_y) / self.scale
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, self.source_width)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, self.source_height)
        return out


def letterbox(
    image: UInt8Image, input_hw: tuple[int, int], centered: bool = True, source_wh: tuple[int, int] | None = None
) -> tuple[UInt8Image, Letterbox]:
    """Resizes ``image`` [H, W, 3] keeping the aspect ratio (bilinear) and pads with 114 to ``input_hw``.

    ``centered``: YOLOv8 splits the padding on both sides; YOLOX puts the image at the top-left.
    ``source_wh``: the full size of a source that ``image`` is an exact reduction of (DCT-scaled
    decode), so the returned mapping goes to the source's pixels.
    """
    in_h, in_w = input_hw
    src_h, src_w = image.shape[:2]
    scale = min(in_h / src_h, in_w / src_w)
    new_w = min(in_w, max(1, round(src_w * scale)))
    new_h = min(in_h, max(1, round(src_h * scale)))
    if (new_w, new_h) != (src_w, src_h):
        image = np.asarray(cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR), np.uint8)
    if centered:
        left, top = (in_w - new_w) // 2, (in_h - new_h) // 2
    else:
        left, top = 0, 0
    canvas = np.full((in_h, in_w, 3), PAD_VALUE, np.uint8)
    canvas[top : top + new_h, left : left + new_w] = image
    full_w, full_h = source_wh or (src_w, src_h)
    # src_w / full_w is 1 or an exact power-of-two reduction, so the scale stays exactly what resized.
    return canvas, Letterbox(scale * (src_w / full_w), float(left), float(top), full_w, full_h)
