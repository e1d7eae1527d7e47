"""The annotated video of ``carmesh track``: track boxes with ids, counting lines with their
in side, zones with their occupancy, and the running counts, drawn with OpenCV."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tracking.core import Track
from tracking.counting import CountKey, Direction
from tracking.geometry import Layout

# Distinct colours (BGR), one per track id (cycled).
_PALETTE = (
    (56, 56, 255),
    (31, 112, 255),
    (29, 178, 255),
    (49, 210, 207),
    (10, 249, 72),
    (134, 219, 61),
    (187, 212, 0),
    (168, 153, 44),
    (255, 194, 0),
    (147, 69, 52),
    (255, 115, 100),
    (236, 24, 0),
    (255, 56, 132),
    (133, 0, 82),
    (255, 56, 203),
)
_LINE_BGR = (0, 230, 255)
_ZONE_BGR = (255, 160, 0)
_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


def _total(counts: Mapping[CountKey, int], name: str, direction: Direction) -> int:
    return sum(n for (item, d, _), n in counts.items() if item == name and d == direction)


def _label(image: np.ndarray, text: str, x: int, y: int, bgr: tuple[int, int, int], scale: float = 0.45) -> None:
    import cv2

    (w, h), base = cv2.getTextSize(text, _FONT, scale, 1)
    y = max(h + base, y)
    cv2.rectangle(image, (x, y - h - base), (x + w + 2, y + base - 1), bgr, -1)
    cv2.putText(image, text, (x + 1, y - 1), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def draw(
    image: np.ndarray,
    tracks: Sequence[Track],
    layout: Layout,
    counts: Mapping[CountKey, int],
    occupancy: Mapping[str, int],
    class_names: Mapping[int, str],
) -> np.ndarray:
    """Draws on (and returns) a BGR frame."""
    import cv2

    overlay = image.copy()
    for zone in layout.zones:
        points = np.array(zone.polygon, np.int32)
        cv2.fillPoly(overlay, [points], _ZONE_BGR)
    image = cv2.addWeighted(overlay, 0.18, image, 0.82, 0)
    for zone in layout.zones:
        points = np.array(zone.polygon, np.int32)
        cv2.polylines(image, [points], True, _ZONE_BGR, 2, cv2.LINE_AA)
        x, y = points.min(axis=0)
        _label(image, f"{zone.name}: {occupancy.get(zone.name, 0)} inside", int(x) + 2, int(y) + 16, _ZONE_BGR)
    for line in layout.lines:
        start = (round(line.start[0]), round(line.start[1]))
        end = (round(line.end[0]), round(line.end[1]))
        cv2.line(image, start, end, _LINE_BGR, 2, cv2.LINE_AA)
        # An arrow from the middle towards the in side.
        mx, my = (line.start[0] + line.end[0]) / 2, (line.start[1] + line.end[1]) / 2
        dx, dy = line.end[0] - line.start[0], line.end[1] - line.start[1]
        length = max(1e-6, float(np.hypot(dx, dy)))
        tip = (round(mx - dy / length * 18), round(my + dx / length * 18))
        cv2.arrowedLine(image, (round(mx), round(my)), tip, _LINE_BGR, 2, cv2.LINE_AA, tipLength=0.4)
    for track in tracks:
        bgr = _PALETTE[track.track_id % len(_PALETTE)]
        x1, y1, x2, y2 = (round(c) for c in track.box_xyxy)
        cv2.rectangle(image, (x1, y1), (x2, y2), bgr, 2)
        name = class_names.get(track.class_id, str(track.class_id))
        _label(image, f"#{track.track_id} {name}", x1, y1 - 2, bgr)
        cv2.circle(image, ((x1 + x2) // 2, y2), 3, bgr, -1)  # the counting anchor
    panel = [
        f"{line.name}: in {_total(counts, line.name, Direction.IN)}  out {_total(counts, line.name, Direction.OUT)}"
        for line in layout.lines
    ] + [
        f"{z.name}: enter {_total(counts, z.name, Direction.ENTER)}  exit {_total(counts, z.name, Direction.EXIT)}"
        for z in layout.zones
    ]
    for i, text in enumerate(panel):
        _label(image, text, 6, 20 + 20 * i, (40, 40, 40), scale=0.55)
    return image
