"""``carmesh cameras zones set|list`` and ``carmesh counts``: a camera's counting lines and
zones, and what the tracker counted (TrackingService through the gateway)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from carmesh.v1 import tracking_pb2, tracking_pb2_grpc
from carmesh_cli.argtypes import count as _count
from carmesh_cli.argtypes import timestamp as _timestamp
from carmesh_cli.connection import EXIT_OK, EXIT_USAGE, CliError, Connection, rpc_failure

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_BUCKETS = {
    "minute": tracking_pb2.COUNT_BUCKET_MINUTE,
    "hour": tracking_pb2.COUNT_BUCKET_HOUR,
    "total": tracking_pb2.COUNT_BUCKET_TOTAL,
}


def since(text: str) -> datetime:
    """``90s``, ``15m``, ``1h``, ``7d`` ago, or an ISO 8601 time."""
    match = _AGO.match(text.strip().lower())
    if match:
        amount = float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
        return datetime.now(UTC) - timedelta(seconds=amount)
    return _timestamp(text)


def frame_size(text: str) -> tuple[int, int]:
    match = _SIZE.match(text.strip().lower())
    if not match or int(match[1]) == 0 or int(match[2]) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a frame size like 1920x1080")
    return int(match[1]), int(match[2])


def add_parsers(commands: Any, common: argparse.ArgumentParser, epilog: str) -> None:
    cameras = commands.add_parser("cameras", parents=[common], help="per-camera settings: counting lines and zones")
    objects = cameras.add_subparsers(dest="object", required=True, metavar="OBJECT")
    zones = objects.add_parser("zones", parents=[common], help="a camera's counting lines and zones (versioned)")
    actions = zones.add_subparsers(dest="action", required=True, metavar="ACTION")
    put = actions.add_parser(
        "set",
        parents=[common],
        help="replace a camera's lines and zones with a new version",
        description="Lines count crossings by direction: `in` is towards the side of start->end turned "
        "clockwise on screen. Zones count entries and exits (docs/tracking.md).",
    )
    put.add_argument("camera", metavar="CAMERA")
    put.add_argument("--size", type=frame_size, required=True, metavar="WxH", help="the camera's frame size")
    put.add_argument("--line", action="append", default=[], metavar="NAME:X1,Y1,X2,Y2", help="a line (repeatable)")
    put.add_argument(
        "--zone", action="append", default=[], metavar="NAME:X1,Y1,X2,Y2,X3,Y3[,...]", help="a zone (repeatable)"
    )
    put.add_argument(
        "--expected-version", type=_count, default=0, metavar="N", help="fail unless the newest version is N"
    )
    put.add_argument("--json", action="store_true", help="print the stored layout as JSON")
    listing = actions.add_parser("list", parents=[common], help="a camera's layout versions, newest first")
    listing.add_argument("camera", metavar="CAMERA")
    listing.add_argument("--max-versions", type=_count, default=0, metavar="N", help="at most N (default 20)")
    listing.add_argument("--json", action="store_true", help="one JSON object per version")

    events = commands.add_parser(
        "events",
        parents=[common],
        help="follow a camera's line crossings and zone changes live",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Streams TrackingService.WatchEvents: events from now on, until interrupted "
        "(the history is in `carmesh counts`).",
    )
    events.add_argument("--camera", required=True, metavar="CAMERA")
    events.add_argument("--follow", action="store_true", help="keep following (the only mode: events are live)")
    events.add_argument("--json", action="store_true", help="one JSON object per event")

    counts = commands.add_parser(
        "counts",
        parents=[common],
        help="line crossings and zone changes the tracker counted for a camera",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    counts.add_argument("camera", metavar="CAMERA")
    counts.add_argument("--since", type=since, default="1h", metavar="AGO|TIME", help="15m, 1h, 7d or ISO (default 1h)")
    counts.add_argument("--until", type=_timestamp, metavar="TIME", help="ISO 8601 end (default now)")
    counts.add_argument("--by", choices=sorted(_BUCKETS), default="minute", help="bucket (default minute)")
    counts.add_argument("--json", action="store_true", help="one JSON object per row")


def layout_record(layout: tracking_pb2.CameraLayout) -> dict[str, Any]:
    return {
        "camera": layout.camera_id,
        "version": layout.version,
        "size": [layout.width, layout.height],
        "lines": [{"name": x.name, "start": [x.start.x, x.start.y], "end": [x.end.x, x.end.y]} for x in layout.lines],
        "zones": [{"name": z.name, "polygon": [[p.x, p.y] for p in z.polygon]} for z in layout.zones],
        "created_at": layout.created_at.ToDatetime(tzinfo=UTC).isoformat() if layout.created_at.seconds else None,
    }


def _layout_text(record: dict[str, Any]) -> str:
    lines = [
        f"{record['camera']} v{record['version']} ({record['size'][0]}x{record['size'][1]}), {record['created_at']}"
    ]
    for line in record["lines"]:
        (x1, y1), (x2, y2) = line["start"], line["end"]
        lines.append(f"  line {line['name']}: {x1:g},{y1:g} -> {x2:g},{y2:g}")
    for zone in record["zones"]:
        lines.append(f"  zone {zone['name']}: " + " ".join(f"{x:g},{y:g}" for x, y in zone["polygon"]))
    return "\n".join(lines)


def _set_request(args: argparse.Namespace) -> tracking_pb2.SetCameraLayoutRequest:
    from tracking.geometry import LayoutError, parse_line_spec, parse_zone_spec

    width, height = args.size
    request = tracking_pb2.SetCameraLayoutRequest(
        camera_id=args.camera, width=width, height=height, expected_version=args.expected_version
    )
    try:
        for name, (x1, y1), (x2, y2) in (parse_line_spec(s) for s in args.line):
            request.lines.add(name=name, start=tracking_pb2.Point(x=x1, y=y1), end=tracking_pb2.Point(x=x2, y=y2))
        for name, points in (parse_zone_spec(s) for s in args.zone):
            request.zones.add(name=name, polygon=[tracking_pb2.Point(x=x, y=y) for x, y in points])
    except LayoutError as exc:
        raise CliError(f"--line/--zone: {exc}", EXIT_USAGE) from exc
    return request


def _stamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def run(conn: Connection, args: argparse.Namespace, *, timeout_s: float, stdout: TextIO = sys.stdout) -> int:
    stub = tracking_pb2_grpc.TrackingServiceStub(conn.channel)
    try:
        if args.command == "cameras" and args.action == "set":
            put = _set_request(args)
            conn.ensure_reachable()
            layout = stub.SetCameraLayout(put, timeout=timeout_s, metadata=conn.metadata).layout
            record = layout_record(layout)
            print(json.dumps(record) if args.json else _layout_text(record), file=stdout)
        elif args.command == "cameras":
            conn.ensure_reachable()
            reply = stub.ListCameraLayouts(
                tracking_pb2.ListCameraLayoutsRequest(camera_id=args.camera, max_versions=args.max_versions),
                timeout=timeout_s,
                metadata=conn.metadata,
            )
            for layout in reply.layouts:
                record = layout_record(layout)
                print(json.dumps(record) if args.json else _layout_text(record), file=stdout)
        elif args.command == "events":
            _follow(stub, conn, args, stdout)
        else:
            query = tracking_pb2.QueryCountsRequest(
                camera_id=args.camera, since=_stamp(args.since), bucket=_BUCKETS[args.by]
            )
            if args.until is not None:
                query.until.CopyFrom(_stamp(args.until))
            conn.ensure_reachable()
            rows = stub.QueryCounts(query, timeout=timeout_s, metadata=conn.metadata).rows
            _print_counts(rows, args.json, stdout)
    except grpc.RpcError as error:
        raise rpc_failure(error, f"camera {args.camera}") from None
    return EXIT_OK


def _print_counts(rows: Any, as_json: bool, stdout: TextIO) -> None:
    if as_json:
        for r in rows:
            start = r.bucket_start.ToDatetime(tzinfo=UTC).isoformat()
            record = {
                "bucket": start,
                "name": r.name,
                "direction": r.direction,
                "class": r.class_name,
                "count": r.count,
            }
            print(json.dumps(record), file=stdout)
        return
    if not rows:
        print("no counts in this interval", file=stdout)
        return
    table: dict[str, dict[str, int]] = defaultdict(dict)
    columns: set[str] = set()
    for r in rows:
        column = f"{r.name} {r.direction} {r.class_name}"
        columns.add(column)
        table[r.bucket_start.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M")][column] = r.count
    header = sorted(columns)
    widths = [max(len(c), 5) for c in header]
    print(f"{'BUCKET (UTC)':<16}  " + "  ".join(f"{c:>{w}}" for c, w in zip(header, widths, strict=True)), file=stdout)
    for bucket in sorted(table):
        cells = "  ".join(f"{table[bucket].get(c, 0):>{w}}" for c, w in zip(header, widths, strict=True))
        print(f"{bucket:<16}  {cells}", file=stdout)


def _follow(
    stub: tracking_pb2_grpc.TrackingServiceStub, conn: Connection, args: argparse.Namespace, out: TextIO
) -> None:
    conn.ensure_reachable()
    call = stub.WatchEvents(tracking_pb2.WatchEventsRequest(camera_id=args.camera), metadata=conn.metadata)
    call.initial_metadata()  # the server answers once it follows the topic's end
    print(f"following the events of camera {args.camera} (Ctrl-C stops)", file=sys.stderr, flush=True)
    for reply in call:
        e = reply.event
        at = e.captured_at.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds")
        if args.json:
            record = {
                "id": e.event_id,
                "at": at,
                "seq": e.seq,
                "track": e.track_id,
                "class": e.class_name,
                "name": e.name,
                "direction": e.direction,
            }
            if e.direction in ("enter", "exit"):
                record["occupancy"] = e.occupancy
            print(json.dumps(record), file=out, flush=True)
        else:
            extra = f" (occupancy {e.occupancy})" if e.direction in ("enter", "exit") else ""
            print(f"{at}  {e.name} {e.direction}  #{e.track_id} {e.class_name}{extra}", file=out, flush=True)
