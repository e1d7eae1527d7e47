"""Line crossings and zone enter/exit of tracked objects: the per-track state machines.

Semantics, and why they differ from ``supervision``'s LineZone/PolygonZone:
- One anchor per box, its bottom centre (where a car meets the road), as supervision's
  ``Position.BOTTOM_CENTER``. Supervision's default, all four corners on one side, waits
  until a large near box has fully passed, and a box clipped at the frame's edge moves its
  corners without the car moving.
- Hysteresis in pixels, not frames: an anchor takes a side of a line (or is in or out of a
  zone) only once it is more than ``margin_px`` from it; inside that band the previous state
  holds. Jittering boxes on the line count nothing, and a gap in the frames (a latest-frame
  source dropping some) does not change what counts, which supervision's
  ``minimum_crossing_threshold`` (consecutive frames) would.
- A crossing counts only where the anchor's path crosses the segment itself, not the
  infinite line past its ends; the path between two observations is a straight line, so a
  track that reappears after a gap on the other side still counts once.
- A track seen first inside a zone enters it, and a track that is lost while inside exits:
  occupancy is always enters minus exits, never negative, never stuck.
Every crossing back and forth counts; counts are per (line or zone, direction, class).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum

from tracking.geometry import Layout


class Direction(StrEnum):
    IN = "in"  # a line crossed towards its in side
    OUT = "out"
    ENTER = "enter"  # a zone
    EXIT = "exit"


@dataclass(frozen=True)
class Event:
    """One crossing or zone change of one track, at the frame where it was seen."""

    name: str  # the line's or zone's name
    direction: Direction
    track_id: int
    class_id: int
    seq: int
    timestamp_s: float


# (line or zone name, direction, class id) -> count
CountKey = tuple[str, Direction, int]


@dataclass
class _TrackState:
    line_side: dict[str, int] = field(default_factory=dict)  # +1 in side, -1 out side
    line_anchor: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # x, y, signed distance
    inside: dict[str, bool] = field(default_factory=dict)


class CrossingCounter:
    """Counts crossings and zone changes of the anchors of one camera's tracks."""

    def __init__(self, layout: Layout, margin_px: float = 3.0) -> None:
        self.layout = layout
        self.margin_px = margin_px
        self.totals: Counter[CountKey] = Counter()
        self._tracks: dict[int, _TrackState] = {}

    def occupancy(self, zone: str) -> int:
        return sum(1 for state in self._tracks.values() if state.inside.get(zone))

    def observe(
        self, track_id: int, class_id: int, anchor: tuple[float, float], seq: int, timestamp_s: float
    ) -> list[Event]:
        state = self._tracks.setdefault(track_id, _TrackState())
        x, y = anchor
        events: list[Event] = []

        def emit(name: str, direction: Direction) -> None:
            events.append(Event(name, direction, track_id, class_id, seq, timestamp_s))
            self.totals[(name, direction, class_id)] += 1

        for line in self.layout.lines:
            distance = line.signed_distance_px(x, y)
            if abs(distance) <= self.margin_px:
                continue  # in the band: the side seen last holds
            side = 1 if distance > 0 else -1
            previous = state.line_side.get(line.name)
            if previous is not None and previous != side:
                px, py, pd = state.line_anchor[line.name]
                fraction = pd / (pd - distance)  # where the straight path meets the line
                along = line.along(px + fraction * (x - px), py + fraction * (y - py))
                if 0.0 <= along <= 1.0:
                    emit(line.name, Direction.IN if side > 0 else Direction.OUT)
            state.line_side[line.name] = side
            state.line_anchor[line.name] = (x, y, distance)

        for zone in self.layout.zones:
            distance = zone.signed_distance_px(x, y)
            was_inside = state.inside.get(zone.name, False)
            if distance > self.margin_px and not was_inside:
                state.inside[zone.name] = True
                emit(zone.name, Direction.ENTER)
            elif distance < -self.margin_px and was_inside:
                state.inside[zone.name] = False
                emit(zone.name, Direction.EXIT)
        return events

    def retire(self, track_id: int, class_id: int, seq: int, timestamp_s: float) -> list[Event]:
        """The track is lost for good: it leaves every zone it is in, and its state is dropped."""
        state = self._tracks.pop(track_id, None)
        if state is None:
            return []
        events = []
        for name, inside in state.inside.items():
            if inside:
                events.append(Event(name, Direction.EXIT, track_id, class_id, seq, timestamp_s))
                self.totals[(name, Direction.EXIT, class_id)] += 1
        return events
