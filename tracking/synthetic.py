"""``python -m tracking.synthetic OUT.mp4``: the synthetic street video (tracking.scenario)
with its ground truth beside it (``OUT.truth.json``: per frame, identity, class, box and
visible fraction; the layout; the true counts), for ``carmesh track`` and the accuracy tests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from tracking.core import FrameDetections
from tracking.scenario import (
    CLASS_NAMES,
    FPS,
    HEIGHT,
    WIDTH,
    DetectionNoise,
    Scenario,
    make_scenario,
    simulate_detections,
)


def truth_record(scenario: Scenario) -> dict[str, Any]:
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "fps": FPS,
        "class_names": list(CLASS_NAMES),
        "lines": [{"name": x.name, "start": list(x.start), "end": list(x.end)} for x in scenario.layout.lines],
        "zones": [{"name": z.name, "polygon": [list(p) for p in z.polygon]} for z in scenario.layout.zones],
        "counts": [
            {"name": name, "direction": direction.value, "class": CLASS_NAMES[class_id], "count": count}
            for (name, direction, class_id), count in sorted(scenario.true_counts().items())
        ],
        "frames": [
            [
                {
                    "id": t.identity,
                    "class": CLASS_NAMES[t.class_id],
                    "box": [round(c, 2) for c in t.box_xyxy],
                    "visibility": round(t.visibility, 3),
                }
                for t in boxes
            ]
            for boxes in scenario.truth()
        ],
    }


def write_video(scenario: Scenario, out: Path) -> Path:
    """Writes OUT (mp4v) and OUT.truth.json; returns the truth file's path."""
    import cv2

    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write {out} (mp4v)")
    try:
        background = scenario.background()
        rng = np.random.default_rng(scenario.seed + 1)
        for frame in range(scenario.frames):
            writer.write(scenario.render(frame, background, rng))
    finally:
        writer.release()
    truth = out.with_suffix(".truth.json")
    truth.write_text(json.dumps(truth_record(scenario)))
    return truth


def write_mot_detections(frames: list[FrameDetections], out: Path) -> None:
    """MOTChallenge det.txt (frame from 1, id -1, x, y, w, h, score, class id)."""
    rows = []
    for f in frames:
        for (x1, y1, x2, y2), score, class_id in zip(f.boxes_xyxy, f.scores, f.class_ids, strict=True):
            rows.append(f"{f.seq + 1},-1,{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{score:.3f},{class_id}\n")
    out.write_text("".join(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracking.synthetic", description=__doc__)
    parser.add_argument("out", type=Path, help="video file to write (.mp4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=600, help="frames at 30 fps (default 600; cars stop at ~530)")
    parser.add_argument(
        "--detections",
        type=Path,
        metavar="FILE",
        help="also write the truth as a detector would report it (tracking.scenario.DetectionNoise's "
        "default rates) to FILE, MOTChallenge det.txt, for `carmesh track --detections`",
    )
    args = parser.parse_args(argv)
    scenario = make_scenario(args.seed, args.frames)
    truth = write_video(scenario, args.out)
    print(f"wrote {args.out} ({args.frames} frames, {WIDTH}x{HEIGHT} at {FPS:g} fps) and {truth}")
    if args.detections is not None:
        write_mot_detections(simulate_detections(scenario.truth(), DetectionNoise(), args.seed), args.detections)
        print(f"wrote {args.detections}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
