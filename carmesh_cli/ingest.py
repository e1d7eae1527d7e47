"""``carmesh ingest ...``: start, follow, list and stop frame sources and import labelled data
sets through IngestService. Paths are read by the ingestor, not here: relative ones are made
absolute against this directory, which is right whenever the ingestor runs on this machine."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit

import grpc

from carmesh.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc
from carmesh_cli import argtypes, paging
from carmesh_cli.connection import EXIT_OK, EXIT_RPC_FAILED, EXIT_USAGE, CliError, Connection, rpc_failure
from carmesh_cli.names import PRESETS, NamesError, parse_names
from carmesh_cli.output import enum_name, print_json, table
from carmesh_cli.progress import ProgressBar, StatusLine, plain_count

SOURCE_KINDS = {
    "folder": ingest_pb2.SOURCE_KIND_IMAGE_FOLDER,
    "video": ingest_pb2.SOURCE_KIND_VIDEO_FILE,
    "stream": ingest_pb2.SOURCE_KIND_STREAM,
}
DATASET_FORMATS = {
    "kitti": ingest_pb2.DATASET_FORMAT_KITTI,
    "yolo": ingest_pb2.DATASET_FORMAT_YOLO,
    "coco": ingest_pb2.DATASET_FORMAT_COCO,
    "voc": ingest_pb2.DATASET_FORMAT_VOC,
    "csv": ingest_pb2.DATASET_FORMAT_CSV,
}
SPLITS = {"train": common_pb2.SPLIT_TRAIN, "val": common_pb2.SPLIT_VAL, "test": common_pb2.SPLIT_TEST}
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")
FOLLOW_INTERVAL_S = 1.0
DEFAULT_TIMEOUT_S = 30.0
# A data set import streams progress for as long as it takes; the deadline only bounds a stuck one.
IMPORT_TIMEOUT_S = 3600.0
RUNNING = ingest_pb2.SOURCE_STATE_RUNNING
FAILED = ingest_pb2.SOURCE_STATE_FAILED


class _MergeMap(argparse.Action):
    """``--map`` may be given more than once; a class mapped twice is a usage error."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        merged = dict(getattr(namespace, self.dest, None) or {})
        twice = sorted(set(merged) & set(values))
        if twice:
            parser.error(f"{option_string}: classes {twice} are mapped twice")
        merged.update(values)
        setattr(namespace, self.dest, merged)


def add_parser(commands: Any, common: argparse.ArgumentParser, epilog: str) -> None:
    ingest = commands.add_parser(
        "ingest",
        parents=[common],
        help="publish frames from folders, videos, streams and data sets",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Drives IngestService: sources publish frames to Kafka (carmesh.frames.v1). PATHs are read "
        "by the ingestor; relative ones are made absolute against the current directory.",
    )
    actions = ingest.add_subparsers(dest="action", required=True, metavar="ACTION")
    helps = {
        "folder": ("PATH", "publish the images of a folder (sorted by name)"),
        "video": ("PATH", "publish the frames of a video file"),
        "stream": ("URL", "publish the latest frames of an RTSP or HTTP MJPEG stream"),
    }
    for kind, (metavar, text) in helps.items():
        start = actions.add_parser(kind, parents=[common], help=text, description=f"StartSource: {text}.")
        start.add_argument("uri", metavar=metavar)
        start.add_argument("--camera", required=True, type=argtypes.name, metavar="ID", help="camera id of the frames")
        start.add_argument(
            "--fps",
            type=argtypes.fps,
            default=0.0,
            metavar="F",
            help="at most F frames per second (default 0: as fast as the source gives them)",
        )
        if kind != "stream":
            start.add_argument("--loop", action="store_true", help="start again from the beginning at the end")
        start.add_argument(
            "--follow",
            action="store_true",
            help="show progress until the source ends (Ctrl-C stops following, not the source)",
        )
        start.add_argument("--json", action="store_true", help="print the source status as JSON")

    lst = actions.add_parser("list", parents=[common], help="list sources and their progress (ListSources)")
    lst.add_argument("--json", action="store_true", help="one JSON object per source")
    paging.add_arguments(lst)

    stop = actions.add_parser("stop", parents=[common], help="stop a source (StopSource)")
    stop.add_argument("source_id", metavar="SOURCE_ID")
    stop.add_argument("--json", action="store_true", help="print the final source status as JSON")

    dataset = actions.add_parser(
        "dataset",
        parents=[common],
        help="import a labelled data set (ImportDataset)",
        description="Imports the images and labels of a data set; progress on stderr, a summary on stdout.",
    )
    dataset.add_argument("path", metavar="PATH", help="root folder (or the annotation file for coco json and csv)")
    dataset.add_argument("--format", required=True, choices=sorted(DATASET_FORMATS), help="layout of the data set")
    dataset.add_argument(
        "--dataset",
        type=argtypes.name,
        metavar="NAME",
        help="data set name recorded on every frame (default: the name of PATH)",
    )
    dataset.add_argument(
        "--map",
        dest="class_map",
        type=argtypes.class_map,
        action=_MergeMap,
        default={},
        metavar="SRC=DST,...",
        help="rename classes; SRC= (empty DST) drops a class",
    )
    dataset.add_argument(
        "--names",
        metavar="SPEC",
        help=f"class names in id order for formats that store ids (yolo): a preset "
        f"({', '.join(sorted(PRESETS))}), a file with one name per line, or a,b,c",
    )
    dataset.add_argument("--camera", type=argtypes.name, metavar="ID", help="camera id of the frames")
    dataset.add_argument(
        "--split",
        choices=sorted(SPLITS),
        help="split of frames whose split the layout does not say (default: the ingestor's)",
    )
    dataset.add_argument("--json", action="store_true", help="print the final counts as JSON")


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def source_spec(kind: str, uri: str, *, camera: str, fps: float, loop: bool) -> ingest_pb2.SourceSpec:
    if kind == "stream":
        scheme = urlsplit(uri).scheme.lower()
        if scheme not in STREAM_SCHEMES or not urlsplit(uri).netloc:
            raise CliError(f"{uri!r} is not a stream URL ({', '.join(s + '://' for s in STREAM_SCHEMES)})", EXIT_USAGE)
    else:
        uri = _absolute(uri)
    return ingest_pb2.SourceSpec(kind=SOURCE_KINDS[kind], uri=uri, camera_id=camera, max_fps=fps, loop=loop)


def import_request(
    path: str,
    *,
    fmt: str,
    dataset: str | None,
    class_map: Mapping[str, str],
    names: str | None,
    camera: str,
    split: str | None,
) -> ingest_pb2.ImportDatasetRequest:
    """The request, or a usage error (unreadable --names) before any call."""
    absolute = _absolute(path)
    class_names: list[str] = []
    if names:
        try:
            class_names = parse_names(names)
        except NamesError as exc:
            raise CliError(str(exc), EXIT_USAGE) from exc
    return ingest_pb2.ImportDatasetRequest(
        format=DATASET_FORMATS[fmt],
        path=absolute,
        # Empty: the ingestor names it after the folder (or the file without its extension).
        dataset=dataset or "",
        class_map=dict(class_map),
        default_split=SPLITS[split] if split else common_pb2.SPLIT_UNSPECIFIED,
        camera_id=camera,
        class_names=class_names,
    )


def kind_name(kind: int) -> str:
    return next((name for name, value in SOURCE_KINDS.items() if value == kind), str(kind))


def state_name(state: int) -> str:
    return enum_name(ingest_pb2.SourceState, state, "SOURCE_STATE_")


def describe(source: ingest_pb2.SourceStatus) -> str:
    """One line for people: ``src-1 folder /data/x -> camera cam-1: running, 120 published, 3 dropped``."""
    spec = source.spec
    limits = [f"max {spec.max_fps:g} fps"] if spec.max_fps else []
    limits += ["looping"] if spec.loop else []
    text = f"{source.source_id} {kind_name(spec.kind)} {spec.uri} -> camera {spec.camera_id}"
    text += f" ({', '.join(limits)})" if limits else ""
    text += f": {state_name(source.state)}, {source.frames_published} published"
    text += f", {source.frames_dropped} dropped" if source.frames_dropped else ""
    text += f", stream lost {source.disconnects}x" if source.disconnects else ""
    return text + (f": {source.error}" if source.error else "")


def sources_table(sources: Sequence[ingest_pb2.SourceStatus]) -> str:
    if not sources:
        return "no sources"
    rows = [
        [
            s.source_id,
            kind_name(s.spec.kind),
            state_name(s.state),
            s.spec.camera_id,
            f"{s.spec.max_fps:g}" if s.spec.max_fps else "-",
            str(s.frames_published),
            str(s.frames_dropped),
            s.spec.uri,
            s.error or "-",
        ]
        for s in sources
    ]
    return table(["ID", "KIND", "STATE", "CAMERA", "FPS", "PUBLISHED", "DROPPED", "URI", "ERROR"], rows)


def dataset_label(request: ingest_pb2.ImportDatasetRequest) -> str:
    """The data set's name for people: as given, else what the ingestor defaults it to."""
    if request.dataset:
        return request.dataset
    base = os.path.basename(request.path.rstrip(os.sep))
    return os.path.splitext(base)[0] if os.path.isfile(request.path) else base


def import_summary(request: ingest_pb2.ImportDatasetRequest, last: ingest_pb2.ImportDatasetResponse) -> str:
    fmt = enum_name(ingest_pb2.DatasetFormat, request.format, "DATASET_FORMAT_")
    text = (
        f"imported {dataset_label(request)} ({fmt}) from {request.path}: "
        f"{last.frames_published} of {last.frames_total} frames, {last.annotations_published} annotations"
    )
    return text + (f", {last.frames_skipped} frames skipped" if last.frames_skipped else "")


def _stub(conn: Connection) -> ingest_pb2_grpc.IngestServiceStub:
    conn.ensure_reachable()
    return ingest_pb2_grpc.IngestServiceStub(conn.channel)


def _finished(source: ingest_pb2.SourceStatus) -> int:
    if source.state == FAILED:
        raise CliError(f"source {source.source_id} failed: {source.error or 'no reason given'}", EXIT_RPC_FAILED)
    return EXIT_OK


def follow(
    stub: ingest_pb2_grpc.IngestServiceStub,
    conn: Connection,
    source_id: str,
    *,
    timeout_s: float,
    stdout: TextIO,
    stderr: TextIO,
    interval_s: float = FOLLOW_INTERVAL_S,
    sleep: Callable[[float], None] = time.sleep,
) -> ingest_pb2.SourceStatus:
    """Polls ListSources until the source is no longer running; returns its last status."""
    status = StatusLine(stderr)
    while True:
        try:
            sources = paging.fetch(
                lambda r: stub.ListSources(r, timeout=timeout_s, metadata=conn.metadata),
                ingest_pb2.ListSourcesRequest(),
                lambda reply: reply.sources,
                paging.Paging(),
                stderr,
            )
        except grpc.RpcError as error:
            raise rpc_failure(error, f"following {source_id}") from None
        source = next((s for s in sources if s.source_id == source_id), None)
        if source is None:
            raise CliError(f"source {source_id} is no longer listed by the ingestor", EXIT_RPC_FAILED)
        if source.state != RUNNING:
            status.finish(describe(source))
            return source
        status.show(describe(source))
        sleep(interval_s)


def run_start(
    conn: Connection,
    kind: str,
    uri: str,
    *,
    camera: str,
    fps: float,
    loop: bool,
    follow_progress: bool,
    as_json: bool,
    timeout_s: float,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    spec = source_spec(kind, uri, camera=camera, fps=fps, loop=loop)
    stub = _stub(conn)
    try:
        reply = stub.StartSource(ingest_pb2.StartSourceRequest(spec=spec), timeout=timeout_s, metadata=conn.metadata)
    except grpc.RpcError as error:
        raise rpc_failure(error, f"starting {kind} {spec.uri}") from None
    source = reply.source
    if not follow_progress:
        # The id alone on stdout, so `id=$(carmesh ingest folder ...)` works; the rest is for people.
        if as_json:
            print_json(source, stdout)
        else:
            print(source.source_id, file=stdout, flush=True)
            print(f"started {describe(source)}", file=stderr)
        return _finished(source)
    print(f"started {describe(source)}", file=stderr, flush=True)
    try:
        final = follow(stub, conn, source.source_id, timeout_s=timeout_s, stdout=stdout, stderr=stderr)
    except KeyboardInterrupt:
        print(
            f"\nstopped following; {source.source_id} keeps running "
            f"(stop it with: carmesh ingest stop {source.source_id})",
            file=stderr,
        )
        return 130
    if as_json:
        print_json(final, stdout)
    else:
        print(describe(final), file=stdout)
    return _finished(final)


def run_list(
    conn: Connection,
    *,
    as_json: bool,
    timeout_s: float,
    stdout: TextIO = sys.stdout,
    page: paging.Paging = paging.EVERY_PAGE,
    stderr: TextIO = sys.stderr,
) -> int:
    stub = _stub(conn)
    try:
        sources = paging.fetch(
            lambda r: stub.ListSources(r, timeout=timeout_s, metadata=conn.metadata),
            ingest_pb2.ListSourcesRequest(),
            lambda reply: reply.sources,
            page,
            stderr,
        )
    except grpc.RpcError as error:
        raise rpc_failure(error) from None
    if as_json:
        for source in sources:
            print_json(source, stdout)
    else:
        print(sources_table(sources), file=stdout)
    return EXIT_OK


def run_stop(conn: Connection, source_id: str, *, as_json: bool, timeout_s: float, stdout: TextIO = sys.stdout) -> int:
    request = ingest_pb2.StopSourceRequest(source_id=source_id)
    try:
        reply = _stub(conn).StopSource(request, timeout=timeout_s, metadata=conn.metadata)
    except grpc.RpcError as error:
        raise rpc_failure(error) from None
    if as_json:
        print_json(reply.source, stdout)
    else:
        print(f"stopped {describe(reply.source)}", file=stdout)
    return EXIT_OK


def run_import_dataset(
    conn: Connection,
    request: ingest_pb2.ImportDatasetRequest,
    *,
    as_json: bool,
    timeout_s: float,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    stub = _stub(conn)
    progress = ProgressBar(f"importing {dataset_label(request)}", 0, stderr, unit=plain_count)
    last = ingest_pb2.ImportDatasetResponse()
    call = stub.ImportDataset(request, timeout=timeout_s, metadata=conn.metadata)
    try:
        for last in call:
            progress.update(last.frames_published + last.frames_skipped, last.frames_total)
    except grpc.RpcError as error:
        raise rpc_failure(error, f"importing {request.path}") from None
    except KeyboardInterrupt:
        call.cancel()
        raise
    progress.finish()
    if not last.done:
        raise CliError(
            f"the import of {request.path} ended before it was done: {import_summary(request, last)}", EXIT_RPC_FAILED
        )
    if as_json:
        print_json(last, stdout)
    else:
        print(import_summary(request, last), file=stdout)
    return EXIT_OK


def run(conn: Connection, args: argparse.Namespace, *, timeout_s: float | None, stdout: TextIO = sys.stdout) -> int:
    """``carmesh ingest ACTION``; ``timeout_s`` None: each action's default deadline."""
    if args.action == "dataset":
        request = import_request(
            args.path,
            fmt=args.format,
            dataset=args.dataset,
            class_map=args.class_map,
            names=args.names,
            camera=args.camera or "",
            split=args.split,
        )
        return run_import_dataset(
            conn, request, as_json=args.json, timeout_s=timeout_s or IMPORT_TIMEOUT_S, stdout=stdout
        )
    timeout_s = timeout_s or DEFAULT_TIMEOUT_S
    if args.action in SOURCE_KINDS:
        return run_start(
            conn,
            args.action,
            args.uri,
            camera=args.camera,
            fps=args.fps,
            loop=getattr(args, "loop", False),
            follow_progress=args.follow,
            as_json=args.json,
            timeout_s=timeout_s,
            stdout=stdout,
        )
    if args.action == "list":
        return run_list(conn, as_json=args.json, timeout_s=timeout_s, stdout=stdout, page=paging.Paging.of(args))
    return run_stop(conn, args.source_id, as_json=args.json, timeout_s=timeout_s, stdout=stdout)
