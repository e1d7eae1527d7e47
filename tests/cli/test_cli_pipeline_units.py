"""``carmesh ingest|datasets|features`` without a gateway: parsing, request building, output, exit codes."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from carmesh.v1 import common_pb2, feature_pb2, ingest_pb2
from carmesh_cli.connection import EXIT_UNREACHABLE, EXIT_USAGE, CliError
from carmesh_cli.datasets import (
    describe_filter,
    features_text,
    parse_ref,
    snapshot_details,
    snapshot_request,
    snapshots_table,
)
from carmesh_cli.ingest import dataset_label, describe, import_request, import_summary, source_spec, sources_table
from carmesh_cli.main import build_parser, main
from carmesh_cli.names import COCO_NAMES
from carmesh_cli.output import age, print_json
from carmesh_cli.progress import ProgressBar, StatusLine, plain_count
from tests.helpers import free_port


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_source_commands_parse():
    folder = parse("ingest", "folder", "frames", "--camera", "cam-1", "--fps", "2.5", "--loop", "--follow")
    assert (folder.command, folder.action, folder.uri, folder.camera) == ("ingest", "folder", "frames", "cam-1")
    assert (folder.fps, folder.loop, folder.follow, folder.json) == (2.5, True, True, False)
    video = parse("ingest", "video", "clip.mp4", "--camera", "c", "--json", "--gateway", "gw:1")
    assert (video.fps, video.loop, video.json, video.gateway) == (0.0, False, True, "gw:1")
    stream = parse("ingest", "stream", "rtsp://cam/live", "--camera", "c", "--fps", "5")
    assert stream.fps == 5.0 and not hasattr(stream, "loop")  # a live stream has no beginning to loop to
    assert parse("ingest", "stop", "src-7").source_id == "src-7"
    assert parse("ingest", "list", "--json").json


def test_source_spec_makes_paths_absolute_and_checks_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = source_spec("folder", "frames", camera="cam-1", fps=2.0, loop=True)
    assert spec == ingest_pb2.SourceSpec(
        kind=ingest_pb2.SOURCE_KIND_IMAGE_FOLDER,
        uri=str(tmp_path / "frames"),
        camera_id="cam-1",
        max_fps=2.0,
        loop=True,
    )
    video = source_spec("video", "~/clip.mp4", camera="c", fps=0, loop=False)
    assert video.kind == ingest_pb2.SOURCE_KIND_VIDEO_FILE and video.uri == os.path.expanduser("~/clip.mp4")
    for url in ("rtsp://127.0.0.1:8554/cam", "http://host:8080/video.mjpg", "HTTPS://host/x"):
        stream = source_spec("stream", url, camera="c", fps=1, loop=False)
        assert (stream.kind, stream.uri) == (ingest_pb2.SOURCE_KIND_STREAM, url)
    for bad in ("camera.local/live", "ftp://host/x", "rtsp://", "/dev/video0"):
        with pytest.raises(CliError, match="is not a stream URL") as info:
            source_spec("stream", bad, camera="c", fps=1, loop=False)
        assert info.value.exit_code == EXIT_USAGE


def test_dataset_import_request(tmp_path):
    root = tmp_path / "apollo-cars"
    root.mkdir()
    args = parse(
        "ingest",
        "dataset",
        str(root) + "/",
        "--format",
        "kitti",
        "--map",
        "Van=car,DontCare=",
        "--map",
        "Truck=truck",
        "--names",
        "coco",
        "--camera",
        "cam-9",
        "--split",
        "val",
    )
    assert args.class_map == {"Van": "car", "DontCare": "", "Truck": "truck"}
    request = import_request(
        args.path,
        fmt=args.format,
        dataset=args.dataset,
        class_map=args.class_map,
        names=args.names,
        camera=args.camera,
        split=args.split,
    )
    assert request.format == ingest_pb2.DATASET_FORMAT_KITTI
    assert request.path == str(root)
    assert request.dataset == "" and dataset_label(request) == "apollo-cars"  # the ingestor names it
    assert dict(request.class_map) == {"Van": "car", "DontCare": "", "Truck": "truck"}
    assert list(request.class_names) == list(COCO_NAMES)
    assert (request.camera_id, request.default_split) == ("cam-9", common_pb2.SPLIT_VAL)

    labels = tmp_path / "instances.json"
    labels.write_text("{}")
    coco = import_request(
        str(labels), fmt="coco", dataset=None, class_map={}, names="car, truck", camera="", split=None
    )
    assert (coco.format, dataset_label(coco), list(coco.class_names)) == (
        ingest_pb2.DATASET_FORMAT_COCO,
        "instances",
        ["car", "truck"],
    )
    assert coco.default_split == common_pb2.SPLIT_UNSPECIFIED and not coco.class_map
    named = import_request(str(root), fmt="yolo", dataset="mine", class_map={}, names=None, camera="", split="train")
    assert (named.dataset, named.default_split, list(named.class_names)) == ("mine", common_pb2.SPLIT_TRAIN, [])


def test_dataset_commands_parse():
    create = parse(
        "datasets",
        "create",
        "cars",
        "--camera",
        "a,b",
        "--camera",
        "c",
        "--dataset",
        "apollo",
        "--labelled-only",
        "--classes",
        "car",
        "--val-fraction",
        "0.25",
        "--seed",
        "7",
        "--keep-source-split",
        "--captured-after",
        "2026-11-01",
        "--captured-before",
        "2026-11-28T06:00:00+01:00",
    )
    request = snapshot_request(create)
    assert request.name == "cars"
    assert list(request.filter.camera_ids) == ["a", "b", "c"]
    assert (list(request.filter.datasets), list(request.filter.classes)) == (["apollo"], ["car"])
    assert request.filter.labelled_only and request.keep_source_split
    assert (request.val_fraction, request.seed) == (0.25, 7)
    assert request.filter.captured_after.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 1, tzinfo=UTC)
    assert request.filter.captured_before.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 28, 5, 0, tzinfo=UTC)

    plain = snapshot_request(parse("datasets", "create", "all"))
    assert plain.filter == feature_pb2.DatasetFilter()
    assert (plain.val_fraction, plain.seed, plain.keep_source_split) == (0.2, 0, False)
    assert not plain.filter.HasField("captured_after")

    # A client's labelled frames are snapshotted only when their namespace is asked for by name.
    theirs = snapshot_request(parse("datasets", "create", "alice-cars", "--dataset", "apollo", "--namespace", "alice"))
    assert (theirs.filter.dataset_namespace, list(theirs.filter.datasets)) == ("alice", ["apollo"])
    assert describe_filter(theirs.filter) == "datasets apollo; namespace alice"

    assert parse("datasets", "list").name == ""
    assert parse("datasets", "list", "cars", "--json").name == "cars"
    assert parse("datasets", "show", "cars:3").ref == "cars:3"
    assert parse("features", "cam-1", "--json").camera == "cam-1"


def test_dataset_refs():
    assert parse_ref("cars") == ("cars", 0)
    assert parse_ref("cars:12") == ("cars", 12)
    for bad in ("cars:", "cars:0", "cars:x", ":3", ""):
        with pytest.raises(CliError) as info:
            parse_ref(bad)
        assert info.value.exit_code == EXIT_USAGE


@pytest.mark.parametrize(
    "argv",
    [
        ["ingest"],
        ["ingest", "folder", "frames"],  # --camera is required
        ["ingest", "folder", "frames", "--camera", " "],
        ["ingest", "video", "v.mp4", "--camera", "c", "--fps", "-1"],
        ["ingest", "video", "v.mp4", "--camera", "c", "--fps", "fast"],
        ["ingest", "stream", "rtsp://x/y", "--camera", "c", "--loop"],
        ["ingest", "stop"],
        ["ingest", "dataset", "d"],  # --format is required
        ["ingest", "dataset", "d", "--format", "pascal"],
        ["ingest", "dataset", "d", "--format", "yolo", "--map", "car"],
        ["ingest", "dataset", "d", "--format", "yolo", "--map", "=car"],
        ["ingest", "dataset", "d", "--format", "yolo", "--map", "a=b,a=c"],
        ["ingest", "dataset", "d", "--format", "yolo", "--map", "a=b", "--map", "a=c"],
        ["ingest", "dataset", "d", "--format", "yolo", "--split", "holdout"],
        ["datasets", "create"],
        ["datasets", "create", "n", "--val-fraction", "1.5"],
        ["datasets", "create", "n", "--seed", "x"],
        ["datasets", "create", "n", "--captured-after", "yesterday"],
        ["datasets", "show"],
        ["features"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv, env={}) == EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ingest", "stream", "camera.local/live", "--camera", "c"], "is not a stream URL"),
        (["ingest", "dataset", "d", "--format", "yolo", "--names", "a,,b"], "empty class name"),
        (["datasets", "show", "cars:v2"], "VERSION must be a whole number"),
        (
            ["datasets", "create", "n", "--captured-after", "2026-11-28", "--captured-before", "2026-11-01"],
            "--captured-after must be before --captured-before",
        ),
    ],
)
def test_bad_values_are_usage_errors_before_any_call(argv, message, capsys):
    # Nothing listens at the gateway address: a usage error must come before any attempt to reach it.
    assert main([*argv, "--gateway", f"127.0.0.1:{free_port()}", "--timeout", "1"], env={}) == EXIT_USAGE
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["ingest", "list"],
        ["ingest", "folder", "frames", "--camera", "c"],
        ["ingest", "stop", "src-1"],
        ["ingest", "dataset", "d", "--format", "kitti"],
        ["datasets", "list"],
        ["datasets", "show", "cars"],
        ["datasets", "create", "cars"],
        ["features", "cam-1"],
    ],
)
def test_unreachable_gateway_exits_3(argv, capsys):
    assert main([*argv, "--timeout", "1"], env={"CARMESH_GATEWAY": f"127.0.0.1:{free_port()}"}) == EXIT_UNREACHABLE
    assert "cannot reach the gateway" in capsys.readouterr().err


def _source(state: int, **kw) -> ingest_pb2.SourceStatus:
    spec = ingest_pb2.SourceSpec(
        kind=ingest_pb2.SOURCE_KIND_IMAGE_FOLDER, uri="/data/frames", camera_id="cam-1", max_fps=2.0, loop=True
    )
    return ingest_pb2.SourceStatus(source_id="src-1", spec=spec, state=state, **kw)


def test_source_output():
    running = _source(ingest_pb2.SOURCE_STATE_RUNNING, frames_published=120, frames_dropped=3)
    assert describe(running) == (
        "src-1 folder /data/frames -> camera cam-1 (max 2 fps, looping): running, 120 published, 3 dropped"
    )
    failed = _source(ingest_pb2.SOURCE_STATE_FAILED, error="cannot open /data/frames")
    assert describe(failed).endswith(": failed, 0 published: cannot open /data/frames")
    stream = ingest_pb2.SourceStatus(
        source_id="src-2",
        state=ingest_pb2.SOURCE_STATE_STOPPED,
        spec=ingest_pb2.SourceSpec(kind=ingest_pb2.SOURCE_KIND_STREAM, uri="rtsp://h/x", camera_id="gate"),
    )
    lines = sources_table([running, stream]).splitlines()
    assert lines[0].split() == ["ID", "KIND", "STATE", "CAMERA", "FPS", "PUBLISHED", "DROPPED", "URI", "ERROR"]
    assert lines[1].split() == ["src-1", "folder", "running", "cam-1", "2", "120", "3", "/data/frames", "-"]
    assert lines[2].split() == ["src-2", "stream", "stopped", "gate", "-", "0", "0", "rtsp://h/x", "-"]
    assert sources_table([]) == "no sources"
    out = io.StringIO()
    print_json(running, out)
    record = json.loads(out.getvalue())
    assert record["source_id"] == "src-1" and record["state"] == "SOURCE_STATE_RUNNING"
    assert record["frames_published"] == "120"  # int64 is a string in proto JSON


def test_import_summary():
    request = ingest_pb2.ImportDatasetRequest(format=ingest_pb2.DATASET_FORMAT_KITTI, path="/d/apollo", dataset="ap")
    last = ingest_pb2.ImportDatasetResponse(
        frames_total=148, frames_published=147, annotations_published=1500, frames_skipped=1, done=True
    )
    assert import_summary(request, last) == (
        "imported ap (kitti) from /d/apollo: 147 of 148 frames, 1500 annotations, 1 frames skipped"
    )


def _snapshot() -> feature_pb2.DatasetSnapshot:
    snapshot = feature_pb2.DatasetSnapshot(
        name="cars",
        version="3",
        val_fraction=0.2,
        seed=7,
        train_frames=118,
        val_frames=30,
        class_names=["car", "van"],
        filter=feature_pb2.DatasetFilter(datasets=["apollo"], labelled_only=True, classes=["car", "van"]),
    )
    snapshot.created_at.FromDatetime(datetime(2026, 11, 28, 6, 30, 5, tzinfo=UTC))
    return snapshot


def test_snapshot_output():
    snapshot = _snapshot()
    assert snapshot_details(snapshot).splitlines() == [
        "snapshot  cars:3",
        "created   2026-11-28 06:30:05 UTC",
        "frames    148 (118 train, 30 val)",
        "split     val fraction 0.2, seed 7",
        "classes   car, van",
        "filter    datasets apollo; classes car,van; labelled only",
    ]
    lines = snapshots_table([snapshot]).splitlines()
    assert lines[0].split()[:6] == ["NAME", "VERSION", "TRAIN", "VAL", "CLASSES", "CREATED"]
    assert lines[1].startswith("cars  3        118    30   car,van  2026-11-28 06:30")
    kept = feature_pb2.DatasetSnapshot(keep_source_split=True)
    assert "as the source data set says" in snapshot_details(kept)
    assert describe_filter(feature_pb2.DatasetFilter()) == "all frames"


def test_features_output():
    camera = feature_pb2.CameraFeatures(
        camera_id="cam-1",
        last_frame_id="cam-1-0042",
        last_car_count=3,
        car_count_1m=2.5,
        features=feature_pb2.FrameFeatures(brightness=0.45, contrast=0.2, sharpness=123.4, width=1920, height=1080),
        last_model=common_pb2.ModelRef(name="car-detector", version="4", alias="champion"),
    )
    camera.last_seen_at.FromDatetime(datetime(2026, 11, 28, 6, 30, 5, tzinfo=UTC))
    lines = features_text(camera).splitlines()
    assert lines[0] == "camera     cam-1"
    assert lines[1].startswith("last frame cam-1-0042 at 2026-11-28 06:30:05 UTC (")
    assert lines[2:] == [
        "image      1920x1080",
        "quality    brightness 0.450, contrast 0.200, sharpness 123.400",
        "cars       3 in the last frame, 2.50 a frame over the last minute",
        "model      car-detector v4 (@champion)",
    ]
    empty = features_text(feature_pb2.CameraFeatures(camera_id="new")).splitlines()
    assert empty[1] == "last frame - at -" and empty[-1] == "model      -"
    assert age(camera.last_seen_at, now=datetime(2026, 11, 28, 8, 0, tzinfo=UTC)) == "1h"
    assert age(camera.last_seen_at, now=datetime(2026, 11, 28, 6, 30, 9, tzinfo=UTC)) == "4s"


def test_count_progress_and_status_line():
    stream = io.StringIO()
    bar = ProgressBar("importing ap", 0, stream, unit=plain_count)
    bar.update(50, 148)
    bar.update(148)
    bar.finish()
    assert stream.getvalue() == "importing ap [" + "#" * 30 + "] 100% 148/148\n"

    log = io.StringIO()
    status = StatusLine(log, every_s=3600)
    status.show("src-1: running, 1 published")
    status.show("src-1: running, 2 published")  # not on a terminal: at most one line per every_s
    status.finish("src-1: finished, 9 published")
    assert log.getvalue().splitlines() == ["src-1: running, 1 published", "src-1: finished, 9 published"]


def test_relative_dataset_path_is_resolved_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kitti").mkdir()
    request = import_request("kitti", fmt="kitti", dataset=None, class_map={}, names=None, camera="", split=None)
    assert Path(request.path) == tmp_path / "kitti" and dataset_label(request) == "kitti"


def test_describe_counts_a_stream_s_drops() -> None:
    spec = ingest_pb2.SourceSpec(kind=ingest_pb2.SOURCE_KIND_STREAM, uri="rtsp://cam/x", camera_id="cam-1")
    status = ingest_pb2.SourceStatus(
        source_id="src-1",
        spec=spec,
        state=ingest_pb2.SOURCE_STATE_RUNNING,
        disconnects=2,
        reconnects=1,
        error="stream lost; reconnecting in 1.0s (attempt 3)",
    )
    assert describe(status).endswith(", stream lost 2x: stream lost; reconnecting in 1.0s (attempt 3)")
