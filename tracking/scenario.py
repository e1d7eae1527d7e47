"""A synthetic street video with exact ground truth, to measure tracking and counting.

The scene is drawn like ``trainer.synthetic``'s (sky, road, buildings, cars as bodies with
windows and wheels, vans as taller boxes) but held still while vehicles drive through it:
- a far lane (right to left, small vehicles) and a near lane (left to right, big ones) whose
  vehicles overlap the far lane's lower part: cars occlude cars;
- a bus shelter in front of the far lane hides its vehicles for about half a second;
- every vehicle enters at one edge and leaves at the other, one far-lane car stops for
  ~1.3 s just before the counting line and one near-lane car parks in the zone for 2 s;
- the counting line crosses both lanes; the zone covers the right end of the near lane.
The ground truth (identities, boxes clipped to the frame, visible fractions) and the true
counts come from the vehicles' positions, not from the counting code under test.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from tracking.core import FrameDetections
from tracking.counting import CountKey, Direction
from tracking.geometry import CountingLine, Layout, Zone

CLASS_NAMES = ("car", "van")
WIDTH, HEIGHT, FPS = 640, 360, 30.0
FAR_BOTTOM, NEAR_BOTTOM = 215, 265
SHELTER_XYXY = (430, 150, 474, 208)  # in front of the far lane, behind the near lane


@dataclass(frozen=True)
class Vehicle:
    identity: int
    class_id: int
    lane: int  # 0 far (moves left), 1 near (moves right)
    spawn_frame: int
    speed_px: float  # per frame, signed
    width: int
    height: int
    colour: tuple[int, int, int]
    pause_at_frame: int = -1  # frames after spawn at which it stops
    pause_frames: int = 0

    def box_at(self, frame: int) -> tuple[float, float, float, float] | None:
        """Its whole box (not clipped) at a frame, or None before it spawns."""
        t = frame - self.spawn_frame
        if t < 0:
            return None
        if self.pause_frames and t > self.pause_at_frame:
            t = max(self.pause_at_frame, t - self.pause_frames)
        bottom = NEAR_BOTTOM if self.lane else FAR_BOTTOM
        x1 = (-self.width if self.speed_px > 0 else WIDTH) + self.speed_px * t
        return (x1, float(bottom - self.height), x1 + self.width, float(bottom))


@dataclass(frozen=True)
class TruthBox:
    identity: int
    class_id: int
    box_xyxy: tuple[float, float, float, float]  # clipped to the frame
    visibility: float  # fraction of the whole box neither off frame nor hidden


@dataclass(frozen=True)
class Scenario:
    frames: int
    vehicles: tuple[Vehicle, ...]
    layout: Layout
    seed: int

    def truth(self) -> list[list[TruthBox]]:
        """Per frame, every vehicle at least partly in the frame, nearest last."""
        result = []
        for frame in range(self.frames):
            boxes = [(v, b) for v in self.vehicles if (b := v.box_at(frame)) is not None]
            boxes = [(v, b) for v, b in boxes if b[2] > 0 and b[0] < WIDTH]
            boxes.sort(key=lambda item: item[0].lane)  # far lane first: drawn first, hidden by the near
            truths = []
            for i, (vehicle, box) in enumerate(boxes):
                nearer = [b for v, b in boxes[i + 1 :] if v.lane > vehicle.lane]
                if vehicle.lane == 0:
                    nearer.append(tuple(float(c) for c in SHELTER_XYXY))  # type: ignore[arg-type]
                clipped = (max(0.0, box[0]), box[1], min(float(WIDTH), box[2]), box[3])
                truths.append(TruthBox(vehicle.identity, vehicle.class_id, clipped, _visible(box, clipped, nearer)))
            result.append(truths)
        return result

    def true_counts(self) -> Counter[CountKey]:
        """Crossings and zone changes from the vehicles' own anchors (bottom centre of the
        box clipped to the frame), and an exit for a vehicle that leaves the frame inside."""
        counts: Counter[CountKey] = Counter()
        for vehicle in self.vehicles:
            previous: tuple[float, float] | None = None
            inside = False
            for frame in range(self.frames):
                box = vehicle.box_at(frame)
                in_frame = box is not None and box[2] > 0 and box[0] < WIDTH
                if box is None or not in_frame:
                    if inside and previous is not None:
                        counts[(self.layout.zones[0].name, Direction.EXIT, vehicle.class_id)] += 1
                        inside = False
                    if box is not None and previous is not None:
                        break  # it has left
                    continue
                anchor = ((max(0.0, box[0]) + min(float(WIDTH), box[2])) / 2, box[3])
                for line in self.layout.lines:
                    if previous is not None:
                        before, after = line.signed_distance_px(*previous), line.signed_distance_px(*anchor)
                        if before <= 0 < after:
                            counts[(line.name, Direction.IN, vehicle.class_id)] += 1
                        elif after < 0 <= before:
                            counts[(line.name, Direction.OUT, vehicle.class_id)] += 1
                for zone in self.layout.zones:
                    now_inside = zone.signed_distance_px(*anchor) > 0
                    if now_inside != inside:
                        counts[(zone.name, Direction.ENTER if now_inside else Direction.EXIT, vehicle.class_id)] += 1
                        inside = now_inside
                previous = anchor
        return counts

    def render(self, frame: int, background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The frame as a camera sees it (BGR): background, far lane, shelter, near lane, noise."""
        import cv2

        image = background.copy()
        for lane in (0, 1):
            for vehicle in self.vehicles:
                box = vehicle.box_at(frame)
                if vehicle.lane == lane and box is not None and box[2] > 0 and box[0] < WIDTH:
                    _draw_vehicle(image, vehicle, box)
            if lane == 0:
                x1, y1, x2, y2 = SHELTER_XYXY
                cv2.rectangle(image, (x1, y1), (x2, y2), (70, 110, 60), -1)
                cv2.rectangle(image, (x1 + 4, y1 + 4), (x2 - 4, y1 + 16), (200, 200, 210), -1)
        noise = rng.normal(0, 4, image.shape)
        return np.clip(image + noise, 0, 255).astype(np.uint8)

    def background(self) -> np.ndarray:
        import cv2

        rng = np.random.default_rng(self.seed)
        horizon = 140
        image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        sky = np.linspace(rng.uniform(190, 230), rng.uniform(130, 170), horizon)[:, None, None]
        image[:horizon] = np.clip(sky * np.array([1.0, 0.95, 0.85]), 0, 255).astype(np.uint8)
        image[horizon:] = np.array([92, 92, 95], np.uint8)
        for _ in range(6):  # buildings on the horizon
            x, w, h = int(rng.integers(0, WIDTH)), int(rng.integers(40, 160)), int(rng.integers(30, horizon))
            cv2.rectangle(image, (x, horizon - h), (x + w, horizon), rng.integers(60, 200, 3).tolist(), -1)
        cv2.rectangle(image, (0, horizon), (WIDTH, 160), (150, 150, 150), -1)  # far kerb
        for x in range(0, WIDTH, 60):  # lane marks between the lanes
            cv2.line(image, (x, 232), (x + 30, 232), (225, 225, 225), 2)
        cv2.rectangle(image, (0, 300), (WIDTH, HEIGHT), (150, 150, 150), -1)  # near kerb
        return image


def _visible(
    box: tuple[float, float, float, float],
    clipped: tuple[float, float, float, float],
    occluders: list[tuple[float, float, float, float]],
) -> float:
    area = (box[2] - box[0]) * (box[3] - box[1])
    x1, y1, x2, y2 = (round(c) for c in clipped)
    if x2 <= x1 or y2 <= y1:
        return 0.0
    mask = np.ones((y2 - y1, x2 - x1), bool)
    for ox1, oy1, ox2, oy2 in occluders:
        ax1, ay1 = max(x1, round(ox1)), max(y1, round(oy1))
        ax2, ay2 = min(x2, round(ox2)), min(y2, round(oy2))
        if ax2 > ax1 and ay2 > ay1:
            mask[ay1 - y1 : ay2 - y1, ax1 - x1 : ax2 - x1] = False
    return float(mask.sum()) / area


def _draw_vehicle(image: np.ndarray, vehicle: Vehicle, box: tuple[float, float, float, float]) -> None:
    import cv2

    x1, y1, x2, y2 = (round(c) for c in box)
    w, h = x2 - x1, y2 - y1
    van = vehicle.class_id == 1
    wheel_r = max(2, h // 6)
    body_top = y1 if van else y1 + h // 3
    cv2.rectangle(image, (x1, body_top), (x2, y2 - wheel_r), vehicle.colour, -1)
    if van:
        cv2.rectangle(image, (x1 + w // 8, y1 + h // 10), (x2 - w // 8, y1 + h // 3), (60, 40, 30), -1)
    else:  # cabin with windows
        cv2.rectangle(image, (x1 + w // 5, y1), (x2 - w // 5, body_top), vehicle.colour, -1)
        cv2.rectangle(image, (x1 + w // 4, y1 + h // 12), (x2 - w // 4, body_top), (60, 40, 30), -1)
    for cx in (x1 + w // 5, x2 - w // 5):
        cv2.circle(image, (cx, y2 - wheel_r), wheel_r, (15, 15, 15), -1)


def make_scenario(seed: int = 0, frames: int = 600) -> Scenario:
    """Ten near-lane and seven far-lane vehicles over 20 s at 30 fps, all gone 1.5 s before the end."""
    rng = np.random.default_rng(seed)
    vehicles: list[Vehicle] = []
    layout = Layout(
        lines=(CountingLine("gate", (320.0, 300.0), (320.0, 150.0)),),  # drawn upwards: in = moving right
        zones=(Zone("bay", ((500.0, 240.0), (640.0, 240.0), (640.0, 300.0), (500.0, 300.0))),),
    )
    for lane, count, first, spacing, speed, height in ((1, 10, 0, (32, 45), 6.0, 64), (0, 7, 10, (38, 48), -3.6, 36)):
        spawn = first
        for i in range(count):
            van = bool(rng.random() < 0.25)
            width = int(height * (rng.uniform(1.1, 1.25) if van else rng.uniform(1.45, 1.65)))
            pause_at, pause = -1, 0
            if i == count - 1 and lane == 1:  # parks in the zone
                pause_at, pause = int((510 + width) / speed), 60
            elif i == count - 1:  # waits just before the line
                pause_at, pause = int((WIDTH - 332 + width / 2) / -speed), 40
            vehicles.append(
                Vehicle(
                    identity=len(vehicles) + 1,
                    class_id=int(van),
                    lane=lane,
                    spawn_frame=spawn,
                    speed_px=float(speed * rng.uniform(0.97, 1.03)),
                    width=width,
                    height=height + (height // 6 if van else 0),
                    colour=tuple(int(c) for c in rng.integers(30, 230, 3)),  # type: ignore[arg-type]
                    pause_at_frame=pause_at,
                    pause_frames=pause,
                )
            )
            spawn += int(rng.integers(*spacing))
    return Scenario(frames, tuple(vehicles), layout, seed)


@dataclass(frozen=True)
class DetectionNoise:
    """How the simulated detector errs: box jitter (sigma as a fraction of the box's size),
    boxes dropped at random, class flips, and false boxes; boxes less visible than
    ``min_visibility`` are never detected (and are not in the scored truth either)."""

    jitter: float = 0.03
    drop_rate: float = 0.1
    class_flip_rate: float = 0.05
    false_per_frame: float = 0.05
    min_visibility: float = 0.5


def simulate_detections(truth: list[list[TruthBox]], noise: DetectionNoise, seed: int = 0) -> list[FrameDetections]:
    """The ground truth as a detector would report it, at the known error rates."""
    rng = np.random.default_rng(seed)
    frames = []
    for seq, boxes in enumerate(truth):
        rows: list[tuple[float, float, float, float]] = []
        scores: list[float] = []
        classes: list[int] = []
        for t in boxes:
            if t.visibility < noise.min_visibility or rng.random() < noise.drop_rate:
                continue
            x1, y1, x2, y2 = t.box_xyxy
            w, h = x2 - x1, y2 - y1
            dx1, dx2 = rng.normal(0, noise.jitter * w, 2)
            dy1, dy2 = rng.normal(0, noise.jitter * h, 2)
            rows.append((x1 + dx1, y1 + dy1, x2 + dx2, y2 + dy2))
            scores.append(float(rng.uniform(0.45, 0.95)))  # some go to ByteTrack's second stage
            flip = rng.random() < noise.class_flip_rate
            classes.append(1 - t.class_id if flip else t.class_id)
        if rng.random() < noise.false_per_frame:
            x, y = rng.uniform(0, WIDTH - 60), rng.uniform(150, HEIGHT - 40)
            rows.append((x, y, x + rng.uniform(20, 60), y + rng.uniform(15, 40)))
            scores.append(float(rng.uniform(0.3, 0.6)))
            classes.append(0)
        frames.append(
            FrameDetections(
                seq=seq,
                timestamp_s=seq / FPS,
                boxes_xyxy=np.array(rows, np.float64).reshape(-1, 4),
                scores=np.array(scores, np.float64),
                class_ids=np.array(classes, np.int64),
            )
        )
    return frames
