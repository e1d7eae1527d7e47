"""Counting lines and polygon zones of one camera, and their validation.

Coordinates are source-image pixels (x right, y down), the frame of ``BoundingBox``. A line
has a direction: its *in* side is the side its normal points to, the normal being
start->end turned 90 degrees clockwise on screen (a line drawn left to right has its in side
below it; one drawn top to bottom has it on the screen's left). Crossing towards the in side
counts as ``in``, the other way as ``out``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

# A camera's lines and zones together; more costs every frame and nobody reads 64 counters.
MAX_ITEMS_PER_CAMERA = 16
MAX_ZONE_VERTICES = 32
MIN_LINE_LENGTH_PX = 4.0
MIN_ZONE_AREA_PX2 = 16.0
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

Point = tuple[float, float]


class LayoutError(ValueError):
    """A line or zone that cannot be used; ``field`` names it (``lines[1].end``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


@dataclass(frozen=True)
class CountingLine:
    name: str
    start: Point
    end: Point

    def signed_distance_px(self, x: float, y: float) -> float:
        """Distance of (x, y) from the infinite line, positive on the in side."""
        dx, dy = self.end[0] - self.start[0], self.end[1] - self.start[1]
        # Normal (-dy, dx) is start->end turned clockwise on screen (y points down).
        return ((x - self.start[0]) * -dy + (y - self.start[1]) * dx) / math.hypot(dx, dy)

    def along(self, x: float, y: float) -> float:
        """Position of (x, y)'s projection on the segment: 0 at start, 1 at end."""
        dx, dy = self.end[0] - self.start[0], self.end[1] - self.start[1]
        return ((x - self.start[0]) * dx + (y - self.start[1]) * dy) / (dx * dx + dy * dy)


@dataclass(frozen=True)
class Zone:
    name: str
    polygon: tuple[Point, ...]

    def signed_distance_px(self, x: float, y: float) -> float:
        """Distance of (x, y) to the polygon's boundary, positive inside (even-odd rule)."""
        inside = False
        nearest = math.inf
        points = self.polygon
        for i, (ax, ay) in enumerate(points):
            bx, by = points[(i + 1) % len(points)]
            if (ay > y) != (by > y) and x < ax + (y - ay) * (bx - ax) / (by - ay):
                inside = not inside
            nearest = min(nearest, _segment_distance(x, y, ax, ay, bx, by))
        return nearest if inside else -nearest


@dataclass(frozen=True)
class Layout:
    """What one camera counts: its lines and zones (names unique across both)."""

    lines: tuple[CountingLine, ...] = ()
    zones: tuple[Zone, ...] = ()


def _segment_distance(x: float, y: float, ax: float, ay: float, bx: float, by: float) -> float:
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((x - ax) * dx + (y - ay) * dy) / length2))
    return math.hypot(x - (ax + t * dx), y - (ay + t * dy))


def _check_point(field: str, point: Sequence[float], width: int, height: int) -> Point:
    if len(point) != 2:
        raise LayoutError(field, "a point is two numbers, x and y")
    x, y = float(point[0]), float(point[1])
    if not (math.isfinite(x) and math.isfinite(y)):
        raise LayoutError(field, "coordinates must be finite numbers")
    if not (0 <= x <= width and 0 <= y <= height):
        raise LayoutError(field, f"({x:g}, {y:g}) lies outside the {width}x{height} frame")
    return (x, y)


def _crosses(p: Point, q: Point, r: Point, s: Point) -> bool:
    """Whether segments pq and rs properly intersect (touching ends of neighbours excluded by the caller)."""

    def orient(a: Point, b: Point, c: Point) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    d1, d2, d3, d4 = orient(r, s, p), orient(r, s, q), orient(p, q, r), orient(p, q, s)
    return d1 * d2 < 0 and d3 * d4 < 0


def _polygon_area_px2(points: Sequence[Point]) -> float:
    return abs(sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(points, [*points[1:], points[0]], strict=True))) / 2


def _check_name(field: str, name: str, seen: set[str]) -> None:
    if not _NAME.match(name):
        raise LayoutError(field, "a name is 1-32 of a-z, 0-9, '_' and '-', starting with a letter or digit")
    if name in seen:
        raise LayoutError(field, f"name {name!r} is used twice (lines and zones share one namespace)")
    seen.add(name)


def validate_layout(
    lines: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    zones: Sequence[tuple[str, Sequence[Sequence[float]]]],
    width: int,
    height: int,
    max_items: int = MAX_ITEMS_PER_CAMERA,
) -> Layout:
    """Builds a Layout from untrusted input, or raises LayoutError naming the first bad field."""
    if width <= 0 or height <= 0:
        raise LayoutError("frame", "the frame width and height must be positive")
    if len(lines) + len(zones) > max_items:
        raise LayoutError("lines", f"at most {max_items} lines and zones per camera, got {len(lines) + len(zones)}")
    seen: set[str] = set()
    built_lines = []
    for i, (name, start, end) in enumerate(lines):
        _check_name(f"lines[{i}].name", name, seen)
        a = _check_point(f"lines[{i}].start", start, width, height)
        b = _check_point(f"lines[{i}].end", end, width, height)
        if math.dist(a, b) < MIN_LINE_LENGTH_PX:
            raise LayoutError(f"lines[{i}].end", f"a line must be at least {MIN_LINE_LENGTH_PX:g} px long")
        built_lines.append(CountingLine(name, a, b))
    built_zones = []
    for i, (name, raw) in enumerate(zones):
        _check_name(f"zones[{i}].name", name, seen)
        if not 3 <= len(raw) <= MAX_ZONE_VERTICES:
            raise LayoutError(f"zones[{i}].polygon", f"a zone has 3 to {MAX_ZONE_VERTICES} vertices, got {len(raw)}")
        points = [_check_point(f"zones[{i}].polygon[{j}]", p, width, height) for j, p in enumerate(raw)]
        n = len(points)
        for j in range(n):
            for k in range(j + 2, n):
                if j == 0 and k == n - 1:
                    continue  # neighbours through the closing edge
                if _crosses(points[j], points[(j + 1) % n], points[k], points[(k + 1) % n]):
                    raise LayoutError(f"zones[{i}].polygon", f"edges {j} and {k} cross: the polygon must be simple")
        if _polygon_area_px2(points) < MIN_ZONE_AREA_PX2:
            raise LayoutError(f"zones[{i}].polygon", f"the polygon's area is under {MIN_ZONE_AREA_PX2:g} px^2")
        built_zones.append(Zone(name, tuple(points)))
    return Layout(tuple(built_lines), tuple(built_zones))


def parse_line_spec(spec: str) -> tuple[str, tuple[float, float], tuple[float, float]]:
    """``NAME:X1,Y1,X2,Y2`` (or ``X1,Y1,X2,Y2``, named ``line``) as given on a command line."""
    name, _, coords = spec.rpartition(":")
    try:
        values = [float(v) for v in coords.split(",")]
    except ValueError as exc:
        raise LayoutError("line", f"{spec!r} is not NAME:X1,Y1,X2,Y2") from exc
    if len(values) != 4:
        raise LayoutError("line", f"{spec!r} is not NAME:X1,Y1,X2,Y2 (four numbers)")
    return (name or "line", (values[0], values[1]), (values[2], values[3]))


def parse_zone_spec(spec: str) -> tuple[str, list[tuple[float, float]]]:
    """``NAME:X1,Y1,X2,Y2,X3,Y3[,...]`` as given on a command line."""
    name, _, coords = spec.rpartition(":")
    try:
        values = [float(v) for v in coords.split(",")]
    except ValueError as exc:
        raise LayoutError("zone", f"{spec!r} is not NAME:X1,Y1,X2,Y2,X3,Y3,...") from exc
    if len(values) % 2 or len(values) < 6:
        raise LayoutError("zone", f"{spec!r} needs an even count of numbers, at least three points")
    return (name or "zone", [(values[i], values[i + 1]) for i in range(0, len(values), 2)])
