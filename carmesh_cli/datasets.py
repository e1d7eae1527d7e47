"""``carmesh datasets ...`` (immutable, versioned dataset snapshots) and ``carmesh features CAMERA``
(online features of a camera), both through FeatureService."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any, TextIO

import grpc

from carmesh.v1 import feature_pb2, feature_pb2_grpc
from carmesh_cli import argtypes, paging
from carmesh_cli.connection import EXIT_OK, EXIT_RPC_FAILED, EXIT_USAGE, CliError, Connection, rpc_failure
from carmesh_cli.output import age, is_set, print_json, table, when

DEFAULT_TIMEOUT_S = 30.0
# Creating a snapshot scans the offline store: allow it longer than a lookup.
CREATE_TIMEOUT_S = 300.0
DEFAULT_VAL_FRACTION = 0.2


def add_parsers(commands: Any, common: argparse.ArgumentParser, epilog: str) -> None:
    datasets = commands.add_parser(
        "datasets",
        parents=[common],
        help="create and inspect dataset snapshots",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A snapshot is an immutable, versioned set of frames with a train/val split (FeatureService).",
    )
    actions = datasets.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        parents=[common],
        help="snapshot the frames that match a filter (a new version of NAME)",
        description="CreateDatasetSnapshot: every filter option narrows the frames; none given takes all frames.",
    )
    create.add_argument("name", type=argtypes.name, metavar="NAME")
    create.add_argument(
        "--camera",
        dest="cameras",
        type=argtypes.names,
        action="extend",
        default=[],
        metavar="ID,...",
        help="only frames of these cameras (repeatable)",
    )
    create.add_argument(
        "--dataset",
        dest="datasets",
        type=argtypes.names,
        action="extend",
        default=[],
        metavar="NAME,...",
        help="only frames of these imported data sets (repeatable)",
    )
    create.add_argument(
        "--classes",
        type=argtypes.names,
        action="extend",
        default=[],
        metavar="A,B",
        help="only these classes (repeatable)",
    )
    create.add_argument("--labelled-only", action="store_true", help="only frames with at least one label")
    create.add_argument(
        "--namespace",
        default="",
        metavar="KEY_NAME",
        help="frames a client with this API key name sent through IngestFrames "
        "(default: the operator's imported data sets and sources)",
    )
    create.add_argument(
        "--captured-after",
        type=argtypes.timestamp,
        metavar="TIME",
        help="only frames captured at or after TIME (ISO 8601; no zone: UTC)",
    )
    create.add_argument(
        "--captured-before",
        type=argtypes.timestamp,
        metavar="TIME",
        help="only frames captured before TIME (ISO 8601; no zone: UTC)",
    )
    create.add_argument(
        "--val-fraction",
        type=argtypes.fraction,
        default=DEFAULT_VAL_FRACTION,
        metavar="F",
        help=f"fraction of frames in val (default {DEFAULT_VAL_FRACTION:g})",
    )
    create.add_argument(
        "--seed", type=argtypes.whole, default=0, metavar="N", help="seed of the deterministic split (default 0)"
    )
    create.add_argument(
        "--keep-source-split",
        action="store_true",
        help="keep the train/val split the imported data set gave instead of re-splitting",
    )
    create.add_argument("--json", action="store_true", help="print the snapshot as JSON")

    lst = actions.add_parser("list", parents=[common], help="list snapshots (all, or the versions of NAME)")
    lst.add_argument("name", nargs="?", default="", metavar="NAME")
    lst.add_argument("--json", action="store_true", help="one JSON object per snapshot")
    paging.add_arguments(lst)

    show = actions.add_parser("show", parents=[common], help="describe one snapshot (the latest version by default)")
    show.add_argument("ref", metavar="NAME[:VERSION]")
    show.add_argument("--json", action="store_true", help="print the snapshot as JSON")

    features = commands.add_parser(
        "features",
        parents=[common],
        help="show the online features of a camera",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="GetOnlineFeatures: the latest frame quality, size, car counts and model of a camera.",
    )
    features.add_argument("camera", type=argtypes.name, metavar="CAMERA")
    features.add_argument("--json", action="store_true", help="print the features as JSON")


def parse_ref(text: str) -> tuple[str, int]:
    """``NAME`` -> (NAME, 0: the latest); ``NAME:3`` -> (NAME, 3)."""
    name, sep, version = text.rpartition(":")
    if not sep:
        name, version = text, ""
    name = name.strip()
    if not name:
        raise CliError(f"{text!r}: expected NAME or NAME:VERSION", EXIT_USAGE)
    if not sep:
        return name, 0
    if not version.isdigit() or int(version) < 1:
        raise CliError(f"{text!r}: VERSION must be a whole number >= 1", EXIT_USAGE)
    return name, int(version)


def _stamp(value: datetime | None, target: Any) -> None:
    if value is not None:
        target.FromDatetime(value)


def snapshot_request(args: argparse.Namespace) -> feature_pb2.CreateDatasetSnapshotRequest:
    if args.captured_after and args.captured_before and args.captured_after >= args.captured_before:
        raise CliError("--captured-after must be before --captured-before", EXIT_USAGE)
    request = feature_pb2.CreateDatasetSnapshotRequest(
        name=args.name,
        filter=feature_pb2.DatasetFilter(
            camera_ids=list(dict.fromkeys(args.cameras)),
            datasets=list(dict.fromkeys(args.datasets)),
            labelled_only=args.labelled_only,
            classes=list(dict.fromkeys(args.classes)),
            dataset_namespace=args.namespace,
        ),
        val_fraction=args.val_fraction,
        seed=args.seed,
        keep_source_split=args.keep_source_split,
    )
    _stamp(args.captured_after, request.filter.captured_after)
    _stamp(args.captured_before, request.filter.captured_before)
    return request


def describe_filter(f: feature_pb2.DatasetFilter) -> str:
    parts = [f"cameras {','.join(f.camera_ids)}"] if f.camera_ids else []
    parts += [f"datasets {','.join(f.datasets)}"] if f.datasets else []
    parts += [f"classes {','.join(f.classes)}"] if f.classes else []
    parts += ["labelled only"] if f.labelled_only else []
    parts += [f"namespace {f.dataset_namespace}"] if f.dataset_namespace else []
    parts += [f"after {when(f.captured_after, seconds=True)}"] if is_set(f.captured_after) else []
    parts += [f"before {when(f.captured_before, seconds=True)}"] if is_set(f.captured_before) else []
    return "; ".join(parts) or "all frames"


def split_text(s: feature_pb2.DatasetSnapshot) -> str:
    return "as the source data set says" if s.keep_source_split else f"val fraction {s.val_fraction:g}, seed {s.seed}"


def snapshot_line(s: feature_pb2.DatasetSnapshot) -> str:
    return (
        f"{s.name} version {s.version}: {s.train_frames} train + {s.val_frames} val frames, "
        f"classes {', '.join(s.class_names) or '-'}"
    )


def snapshot_details(s: feature_pb2.DatasetSnapshot) -> str:
    rows = [
        ("snapshot", f"{s.name}:{s.version}"),
        ("created", when(s.created_at, seconds=True) + (" UTC" if is_set(s.created_at) else "")),
        ("frames", f"{s.train_frames + s.val_frames} ({s.train_frames} train, {s.val_frames} val)"),
        ("split", split_text(s)),
        ("classes", ", ".join(s.class_names) or "-"),
        ("filter", describe_filter(s.filter)),
    ]
    return "\n".join(f"{key:<9} {value}" for key, value in rows)


def snapshots_table(snapshots: list[feature_pb2.DatasetSnapshot]) -> str:
    rows = [
        [
            s.name,
            s.version,
            str(s.train_frames),
            str(s.val_frames),
            ",".join(s.class_names) or "-",
            when(s.created_at),
            describe_filter(s.filter),
        ]
        for s in snapshots
    ]
    return table(["NAME", "VERSION", "TRAIN", "VAL", "CLASSES", "CREATED", "FILTER"], rows)


def features_text(camera: feature_pb2.CameraFeatures) -> str:
    f = camera.features
    seen = when(camera.last_seen_at, seconds=True)
    if is_set(camera.last_seen_at):
        seen += f" UTC ({age(camera.last_seen_at)} ago)"
    model = camera.last_model
    model_text = f"{model.name} v{model.version}" + (f" (@{model.alias})" if model.alias else "") if model.name else "-"
    rows = [
        ("camera", camera.camera_id),
        ("last frame", f"{camera.last_frame_id or '-'} at {seen}"),
        ("image", f"{f.width}x{f.height}" if f.width else "-"),
        ("quality", f"brightness {f.brightness:.3f}, contrast {f.contrast:.3f}, sharpness {f.sharpness:.3f}"),
        ("cars", f"{camera.last_car_count} in the last frame, {camera.car_count_1m:.2f} a frame over the last minute"),
        ("model", model_text),
    ]
    return "\n".join(f"{key:<10} {value}" for key, value in rows)


def _stub(conn: Connection) -> feature_pb2_grpc.FeatureServiceStub:
    conn.ensure_reachable()
    return feature_pb2_grpc.FeatureServiceStub(conn.channel)


def _list(
    conn: Connection, name: str, timeout_s: float, page: paging.Paging = paging.EVERY_PAGE, stderr: TextIO = sys.stderr
) -> list[feature_pb2.DatasetSnapshot]:
    """Snapshots by name, then version (the server's order, numeric in the version)."""
    stub = _stub(conn)
    try:
        return paging.fetch(
            lambda r: stub.ListDatasetSnapshots(r, timeout=timeout_s, metadata=conn.metadata),
            feature_pb2.ListDatasetSnapshotsRequest(name=name),
            lambda reply: reply.snapshots,
            page,
            stderr,
        )
    except grpc.RpcError as error:
        raise rpc_failure(error) from None


def run_create(conn: Connection, args: argparse.Namespace, *, timeout_s: float, stdout: TextIO = sys.stdout) -> int:
    request = snapshot_request(args)
    try:
        reply = _stub(conn).CreateDatasetSnapshot(request, timeout=timeout_s, metadata=conn.metadata)
    except grpc.RpcError as error:
        raise rpc_failure(error, f"creating dataset {args.name}") from None
    if args.json:
        print_json(reply.snapshot, stdout)
    else:
        print(f"created {snapshot_line(reply.snapshot)}", file=stdout)
    return EXIT_OK


def run_list(
    conn: Connection,
    name: str,
    *,
    as_json: bool,
    timeout_s: float,
    stdout: TextIO = sys.stdout,
    page: paging.Paging = paging.EVERY_PAGE,
) -> int:
    snapshots = _list(conn, name, timeout_s, page)
    if as_json:
        for snapshot in snapshots:
            print_json(snapshot, stdout)
    elif snapshots:
        print(snapshots_table(snapshots), file=stdout)
    else:
        print(f"no snapshots named {name}" if name else "no dataset snapshots", file=stdout)
    return EXIT_OK


def run_show(conn: Connection, ref: str, *, as_json: bool, timeout_s: float, stdout: TextIO = sys.stdout) -> int:
    name, version = parse_ref(ref)
    snapshots = [s for s in _list(conn, name, timeout_s) if s.name == name]
    if not snapshots:
        raise CliError(f"NOT_FOUND: no dataset snapshot named {name}", EXIT_RPC_FAILED)
    if version:
        chosen = next((s for s in snapshots if s.version == str(version)), None)
        if chosen is None:
            have = ", ".join(str(s.version) for s in snapshots)
            raise CliError(f"NOT_FOUND: {name} has no version {version} (versions: {have})", EXIT_RPC_FAILED)
    else:
        chosen = snapshots[-1]
    if as_json:
        print_json(chosen, stdout)
    else:
        print(snapshot_details(chosen), file=stdout)
    return EXIT_OK


def run_features(conn: Connection, camera: str, *, as_json: bool, timeout_s: float, stdout: TextIO = sys.stdout) -> int:
    request = feature_pb2.GetOnlineFeaturesRequest(camera_id=camera)
    try:
        reply = _stub(conn).GetOnlineFeatures(request, timeout=timeout_s, metadata=conn.metadata)
    except grpc.RpcError as error:
        raise rpc_failure(error, f"camera {camera}") from None
    if as_json:
        print_json(reply.camera, stdout)
    else:
        print(features_text(reply.camera), file=stdout)
    return EXIT_OK


def run(conn: Connection, args: argparse.Namespace, *, timeout_s: float | None, stdout: TextIO = sys.stdout) -> int:
    """``carmesh datasets ACTION`` and ``carmesh features``; ``timeout_s`` None: the action's default."""
    if args.command == "features":
        return run_features(
            conn, args.camera, as_json=args.json, timeout_s=timeout_s or DEFAULT_TIMEOUT_S, stdout=stdout
        )
    if args.action == "create":
        return run_create(conn, args, timeout_s=timeout_s or CREATE_TIMEOUT_S, stdout=stdout)
    if args.action == "list":
        return run_list(
            conn,
            args.name,
            as_json=args.json,
            timeout_s=timeout_s or DEFAULT_TIMEOUT_S,
            stdout=stdout,
            page=paging.Paging.of(args),
        )
    return run_show(conn, args.ref, as_json=args.json, timeout_s=timeout_s or DEFAULT_TIMEOUT_S, stdout=stdout)
