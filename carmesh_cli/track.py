"""``carmesh track VIDEO``: tracks and counts the cars of a video file on this machine.

Each frame goes to the detector through the gateway (``DetectorService.Detect``, the same
call as ``carmesh detect``), or the boxes come from a MOTChallenge detections file
(``--detections``); the tracking and counting run here, with ``tracking.core`` (ByteTrack and
the counting lines and zones of the mesh's tracker), so the counts are the ones the mesh
would give on the same boxes. Needs the ``tracker`` extra (numpy, OpenCV, trackers).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import grpc

from carmesh.v1 import detector_pb2, detector_pb2_grpc
from carmesh_cli.argtypes import fraction as _fraction
from carmesh_cli.argtypes import names as _classes
from carmesh_cli.connection import EXIT_OK, EXIT_USAGE, CliError, Connection, rpc_failure

if TYPE_CHECKING:
    import numpy as np

    from tracking.core import CameraTracker

# Low scores feed ByteTrack's second association stage (boxes of occluded cars).
DEFAULT_SCORE_THRESHOLD = 0.1
MAX_DETECTIONS_FILE_BYTES = 512 * 1024 * 1024


def add_parser(commands: Any, common: argparse.ArgumentParser, epilog: str) -> None:
    track = commands.add_parser(
        "track",
        parents=[common],
        help="track and count the cars of a video (lines, zones, annotated video)",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__,
    )
    track.add_argument("video", type=Path, metavar="VIDEO", help="a video file OpenCV reads (mp4, avi, mkv, ...)")
    track.add_argument(
        "--line",
        action="append",
        default=[],
        metavar="NAME:X1,Y1,X2,Y2",
        help="a counting line in pixels (repeatable); crossing towards the side start->end turned clockwise "
        "on screen counts as `in` (a line drawn left to right: moving down is in)",
    )
    track.add_argument(
        "--zone",
        action="append",
        default=[],
        metavar="NAME:X1,Y1,X2,Y2,X3,Y3[,...]",
        help="a polygon zone in pixels (repeatable): enter/exit counts and occupancy",
    )
    track.add_argument("--out", type=Path, metavar="FILE", help="write the annotated video to FILE (.mp4, mp4v)")
    track.add_argument(
        "--detections",
        type=Path,
        metavar="FILE",
        help="take the boxes from a MOTChallenge det.txt (frame,id,x,y,w,h,score[,class]; frames from 1) "
        "instead of the detector",
    )
    track.add_argument(
        "--class-names",
        type=_classes,
        default=[],
        metavar="A,B",
        help="names of the class ids of --detections, in order (default: the ids)",
    )
    track.add_argument("--tracks", type=Path, metavar="FILE", help="write the tracks as a MOTChallenge results file")
    track.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    track.add_argument(
        "--score-threshold",
        type=_fraction,
        default=DEFAULT_SCORE_THRESHOLD,
        metavar="F",
        help=f"detector score threshold (default {DEFAULT_SCORE_THRESHOLD:g}: ByteTrack uses the low boxes too)",
    )
    track.add_argument(
        "--classes", type=_classes, default=[], metavar="A,B", help="track only these class names, e.g. car,van"
    )


def read_mot_detections(path: Path) -> dict[int, list[tuple[float, float, float, float, float, int]]]:
    """frame index (from 0) -> [(x1, y1, x2, y2, score, class id)]; a bad line is a usage error."""
    try:
        if path.stat().st_size > MAX_DETECTIONS_FILE_BYTES:
            raise CliError(f"{path} is over {MAX_DETECTIONS_FILE_BYTES // 2**20} MiB", EXIT_USAGE)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read detections {path}: {exc}", EXIT_USAGE) from exc
    frames: dict[int, list[tuple[float, float, float, float, float, int]]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            fields = [float(v) for v in raw.split(",")]
            if len(fields) < 7 or fields[0] < 1 or fields[0] != int(fields[0]):
                raise ValueError
        except ValueError:
            raise CliError(f"{path}:{number}: not frame,id,x,y,w,h,score[,class] (frames from 1)", EXIT_USAGE) from None
        x, y, w, h, score = fields[2:7]
        class_id = int(fields[7]) if len(fields) > 7 and fields[7] >= 0 else 0
        frames.setdefault(int(fields[0]) - 1, []).append((x, y, x + w, y + h, score, class_id))
    return frames


def _layout(args: argparse.Namespace, width: int, height: int) -> Any:
    from tracking.geometry import LayoutError, parse_line_spec, parse_zone_spec, validate_layout

    try:
        lines = [parse_line_spec(spec) for spec in args.line]
        zones = [parse_zone_spec(spec) for spec in args.zone]
        return validate_layout(lines, zones, width, height)
    except LayoutError as exc:
        raise CliError(f"--line/--zone: {exc}", EXIT_USAGE) from exc


def _detector(
    conn: Connection, args: argparse.Namespace, timeout_s: float, class_names: dict[int, str]
) -> Callable[[int, np.ndarray], list[tuple[float, float, float, float, float, int]]]:
    import cv2

    conn.ensure_reachable()
    stub = detector_pb2_grpc.DetectorServiceStub(conn.channel)

    def detect(index: int, frame: np.ndarray) -> list[tuple[float, float, float, float, float, int]]:
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if not ok:
            raise CliError(f"frame {index}: cannot encode it as JPEG", EXIT_USAGE)
        request = detector_pb2.DetectRequest(
            image=jpeg.tobytes(),
            score_threshold=args.score_threshold,
            classes=list(args.classes),
            request_id=f"{args.video.name}#{index}",
        )
        try:
            reply = stub.Detect(request, timeout=timeout_s, metadata=conn.metadata)
        except grpc.RpcError as error:
            failure = rpc_failure(error, f"frame {index}")
            raise failure from None
        for d in reply.detections:
            class_names.setdefault(d.class_id, d.class_name or str(d.class_id))
        return [(d.box.x1, d.box.y1, d.box.x2, d.box.y2, d.score, d.class_id) for d in reply.detections]

    return detect


def _frame_detections(seq: int, fps: float, rows: list[tuple[float, float, float, float, float, int]]) -> Any:
    import numpy as np

    from tracking.core import FrameDetections

    return FrameDetections(
        seq=seq,
        timestamp_s=seq / fps,
        boxes_xyxy=np.array([r[:4] for r in rows], np.float64).reshape(-1, 4),
        scores=np.array([r[4] for r in rows], np.float64),
        class_ids=np.array([r[5] for r in rows], np.int64),
    )


def summary(tracker: CameraTracker, class_names: dict[int, str], frames: int, video: Path) -> dict[str, Any]:
    return {
        "video": str(video),
        "frames": frames,
        "counts": [
            {"name": name, "direction": str(direction), "class": class_names.get(cid, str(cid)), "count": count}
            for (name, direction, cid), count in sorted(tracker.totals.items())
        ],
        "occupancy": {zone.name: tracker.occupancy(zone.name) for zone in tracker.layout.zones},
        "stats": vars(tracker.stats),
    }


def _table(record: dict[str, Any]) -> str:
    lines = [f"{record['video']}: {record['frames']} frames"]
    if record["counts"]:
        lines.append(f"  {'LINE/ZONE':<16} {'DIRECTION':<9} {'CLASS':<12} {'COUNT':>6}")
        for c in record["counts"]:
            lines.append(f"  {c['name']:<16} {c['direction']:<9} {c['class']:<12} {c['count']:>6}")
    else:
        lines.append("  no crossings and no zone changes")
    for zone, inside in record["occupancy"].items():
        lines.append(f"  {zone}: {inside} inside at the end")
    return "\n".join(lines)


def run(conn: Connection, args: argparse.Namespace, *, timeout_s: float, stdout: TextIO = sys.stdout) -> int:
    try:
        import cv2

        from carmesh_cli.track_draw import draw
        from tracking.core import CameraTracker
    except ImportError as exc:
        message = f"carmesh track needs the tracker extra (pip install 'carmesh[tracker]'): {exc}"
        raise CliError(message, EXIT_USAGE) from exc

    if not args.video.is_file():
        raise CliError(f"no such video file: {args.video}", EXIT_USAGE)
    capture = cv2.VideoCapture(str(args.video))
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if not capture.isOpened() or width <= 0 or height <= 0:
        raise CliError(f"OpenCV cannot read {args.video} as a video", EXIT_USAGE)
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if 0 < fps < 1000 else 30.0
    layout = _layout(args, width, height)
    class_names: dict[int, str] = dict(enumerate(args.class_names))
    if args.detections is not None:
        boxes = read_mot_detections(args.detections)
        detect = lambda index, _frame: boxes.get(index, [])  # noqa: E731
    else:
        detect = _detector(conn, args, timeout_s, class_names)
    tracker = CameraTracker(layout)
    writer = None
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(args.out), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            raise CliError(f"OpenCV cannot write {args.out} (mp4v)", EXIT_USAGE)
    tracks_file = args.tracks.open("w", encoding="utf-8") if args.tracks is not None else None
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            result = tracker.update(_frame_detections(index, fps, detect(index, frame)))
            if tracks_file is not None:
                for t in result.tracks:
                    x1, y1, x2, y2 = t.box_xyxy
                    box = f"{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f}"
                    tracks_file.write(f"{index + 1},{t.track_id},{box},{t.score:.3f},-1,-1,-1\n")
            if writer is not None:
                occupancy = {zone.name: tracker.occupancy(zone.name) for zone in layout.zones}
                writer.write(draw(frame, result.tracks, layout, tracker.totals, occupancy, class_names))
            index += 1
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        if tracks_file is not None:
            tracks_file.close()
    if index == 0:
        raise CliError(f"{args.video} has no frames OpenCV can decode", EXIT_USAGE)
    record = summary(tracker, class_names, index, args.video)
    print(json.dumps(record) if args.json else _table(record), file=stdout, flush=True)
    return EXIT_OK
