"""``carmesh ingest|datasets|features`` as a user runs them, through the real gateway in front of
the real ingestor, feature_service and detector (streaming detection on), on the real broker,
PostgreSQL and Redis of the test session."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest

from carmesh_cli.names import PRESETS
from tests.cli.support import carmesh
from tests.gateway.support import ADMIN_KEY, DETECT_KEY, run_gateway
from tests.helpers import SHARED, DaemonProcess, free_port
from tests.support import eventually

pytest.importorskip("ingestor.app", reason="the ingestor daemon is not in this tree")
pytest.importorskip("feature_service.app", reason="the feature_service daemon is not in this tree")
from tests.feature_service.support import fresh_database
from tests.ingestor.mjpeg import MjpegCamera
from tests.ingestor.support import small_apollo_frames

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
APOLLO = SHARED / "data" / "apollo-cars"


@dataclass(frozen=True)
class Pipeline:
    gateway: str
    tag: str

    def run(self, *args: str, api_key: str | None = ADMIN_KEY, timeout_s: float = 120):
        return carmesh(*args, gateway=self.gateway, api_key=api_key, timeout_s=timeout_s)

    def json_lines(self, *args: str) -> list[dict]:
        result = self.run(*args, "--json")
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def pipeline(
    keys_file: Path,
    kafka_bootstrap: str,
    redis_url: str,
    postgres_dsn: str,
    shared_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pipeline]:
    tag = uuid.uuid4().hex[:8]
    kafka = ["--kafka-bootstrap", kafka_bootstrap, "--no-kafka-idempotence"]
    with ExitStack() as stack:
        db = stack.enter_context(contextmanager(fresh_database)(postgres_dsn, "cli"))
        # Every test writes its data under the session's temporary folder; the live-stream test's
        # camera is on 127.0.0.1: allowed explicitly (no stream host is by default).
        roots = ["--allowed-roots", f"{tmp_path_factory.getbasetemp()},{shared_dir / 'data'}"]
        streams = ["--stream-allowed-hosts", "127.0.0.1"]
        ingestor = stack.enter_context(DaemonProcess("ingestor", [*kafka, "--metrics-port", "0", *roots, *streams]))
        features = stack.enter_context(
            DaemonProcess(
                "feature_service",
                [
                    *kafka,
                    "--postgres-dsn",
                    db.dsn,
                    "--redis-url",
                    redis_url,
                    "--metrics-port",
                    "0",
                    "--blob-dir",
                    str(tmp_path_factory.mktemp("blobs")),
                    "--frames-group",
                    f"cli-frames-{tag}",
                    "--detections-group",
                    f"cli-detections-{tag}",
                    "--poll-timeout-ms",
                    "200",
                ],
            )
        )
        stack.enter_context(
            DaemonProcess(
                "detector",
                [
                    *kafka,
                    "--model-path",
                    str(shared_dir / "models" / "yolox_nano.onnx"),
                    "--model-family",
                    "yolox",
                    "--class-names",
                    ",".join(PRESETS["coco"]),
                    "--metrics-port",
                    "0",
                    "--stream-consumer",
                    "--stream-group-id",
                    f"cli-detector-{tag}",
                ],
            )
        )
        gateway = stack.enter_context(
            run_gateway(
                keys_file,
                f"127.0.0.1:{free_port()}",
                None,
                "--ingestor-addr",
                ingestor.address,
                "--feature-addr",
                features.address,
            )
        )
        yield Pipeline(gateway.address, tag)


def kitti_subset(root: Path, per_split: dict[str, int]) -> Path:
    """A small KITTI tree of real apollo-cars frames (copied to a temporary folder, not the repo)."""
    for split, count in per_split.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir()
        for image in sorted((APOLLO / split / "images").glob("*.jpg"))[:count]:
            shutil.copy(image, root / split / "images" / image.name)
            shutil.copy(APOLLO / split / "labels" / f"{image.stem}.txt", root / split / "labels")
    return root


def test_ingest_dataset_then_snapshots(pipeline: Pipeline, tmp_path: Path) -> None:
    root = kitti_subset(tmp_path / "apollo-mini", {"train": 6, "val": 3})
    dataset, camera, snap = f"mini-{pipeline.tag}", f"cam-ds-{pipeline.tag}", f"cars-{pipeline.tag}"
    result = pipeline.run(
        "ingest",
        "dataset",
        str(root),
        "--format",
        "kitti",
        "--dataset",
        dataset,
        "--camera",
        camera,
        "--map",
        "van=car",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"imported {dataset} (kitti) from {root}: 9 of 9 frames, "), result.stdout
    assert "importing" in result.stderr and "9/9" in result.stderr  # the progress bar

    # The feature service stores frames as it consumes them: probe until all nine are there.
    def stored() -> bool:
        probe = pipeline.run("datasets", "create", f"probe-{pipeline.tag}", "--dataset", dataset, "--json")
        if probe.returncode != 0:  # e.g. no frames stored yet
            return False
        found = json.loads(probe.stdout)
        return int(found.get("train_frames", 0)) + int(found.get("val_frames", 0)) == 9

    eventually(stored, what="the nine imported frames in the offline store", timeout_s=90, interval_s=0.2)

    kept = pipeline.json_lines("datasets", "create", snap, "--dataset", dataset, "--keep-source-split")[0]
    assert (kept["name"], kept["version"], kept["train_frames"], kept["val_frames"]) == (snap, "1", "6", "3")
    assert "car" in kept["class_names"] and "van" not in kept["class_names"]
    result = pipeline.run("datasets", "create", snap, "--dataset", dataset, "--val-fraction", "0.34", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"created {snap} version 2: ")

    listed = pipeline.run("datasets", "list", snap)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [(snap, "1"), (snap, "2")]
    latest = pipeline.run("datasets", "show", snap)
    assert latest.returncode == 0 and f"snapshot  {snap}:2" in latest.stdout
    assert "split     val fraction 0.34, seed 3" in latest.stdout and f"datasets {dataset}" in latest.stdout
    first = pipeline.json_lines("datasets", "show", f"{snap}:1")[0]
    assert first["keep_source_split"] is True and first["version"] == "1"
    missing = pipeline.run("datasets", "show", f"{snap}:9")
    assert missing.returncode == 1 and f"{snap} has no version 9 (versions: 1, 2)" in missing.stderr


def test_folder_source_follow_then_camera_features(pipeline: Pipeline, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for image in sorted((APOLLO / "val" / "images").glob("*.jpg"))[:4]:
        shutil.copy(image, folder / image.name)
    camera = f"cam-folder-{pipeline.tag}"
    result = pipeline.run("ingest", "folder", str(folder), "--camera", camera, "--fps", "10", "--follow")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": finished, 4 published"), result.stdout
    assert f"folder {folder} -> camera {camera} (max 10 fps)" in result.stdout

    # Frames -> detector (streaming) -> detections -> feature service -> the camera's online features.
    def detected() -> dict | None:
        reply = pipeline.run("features", camera, "--json")
        if reply.returncode != 0:
            return None
        record = json.loads(reply.stdout)
        return record if record.get("last_model", {}).get("name") == "yolox_nano" else None

    record = eventually(detected, what=f"detections of {camera} in its online features", timeout_s=90, interval_s=0.2)
    assert isinstance(record, dict)
    assert (record["camera_id"], record["features"]["width"], record["features"]["height"]) == (camera, 1920, 1080)
    assert record["last_frame_id"]
    table = pipeline.run("features", camera)
    assert table.returncode == 0, table.stderr
    assert f"camera     {camera}" in table.stdout and "model      yolox_nano v" in table.stdout


def test_video_loop_is_listed_and_stopped(pipeline: Pipeline, tmp_path: Path, shared_dir: Path) -> None:
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 180))
    for image in small_apollo_frames(shared_dir, 6, (320, 180)):
        writer.write(image)
    writer.release()
    camera = f"cam-video-{pipeline.tag}"
    started = pipeline.run("ingest", "video", str(clip), "--camera", camera, "--fps", "5", "--loop")
    assert started.returncode == 0, started.stderr
    source_id = started.stdout.strip()
    assert source_id and "\n" not in source_id
    assert started.stderr.startswith(f"started {source_id} video {clip} -> camera {camera} (max 5 fps, looping)")

    def published() -> dict | None:
        mine = [s for s in pipeline.json_lines("ingest", "list") if s["source_id"] == source_id]
        return mine[0] if mine and int(mine[0].get("frames_published", 0)) >= 3 else None

    running = eventually(published, what="three frames of the looping video", timeout_s=60, interval_s=0.2)
    assert isinstance(running, dict) and running["state"] == "SOURCE_STATE_RUNNING"
    stopped = pipeline.run("ingest", "stop", source_id)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith(f"stopped {source_id} video ") and ": stopped, " in stopped.stdout
    listed = pipeline.run("ingest", "list")
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith(source_id))
    assert row[1:4] == ["video", "stopped", camera]


def test_live_stream_source(pipeline: Pipeline, shared_dir: Path) -> None:
    camera = f"cam-live-{pipeline.tag}"
    with MjpegCamera(small_apollo_frames(shared_dir, 3), fps=10) as live:
        started = pipeline.run("ingest", "stream", live.url, "--camera", camera, "--fps", "4", "--json")
        assert started.returncode == 0, started.stderr
        status = json.loads(started.stdout)
        source_id = status["source_id"]
        assert status["spec"]["kind"] == "SOURCE_KIND_STREAM" and status["spec"]["uri"] == live.url

        def published() -> bool:
            mine = [s for s in pipeline.json_lines("ingest", "list") if s["source_id"] == source_id]
            return bool(mine) and int(mine[0].get("frames_published", 0)) >= 3

        eventually(published, what="three frames of the live stream", timeout_s=60, interval_s=0.2)
        stopped = pipeline.json_lines("ingest", "stop", source_id)[0]
        assert stopped["state"] == "SOURCE_STATE_STOPPED"


def test_errors_keep_the_exit_code_conventions(pipeline: Pipeline, tmp_path: Path) -> None:
    missing = pipeline.run("ingest", "stop", f"no-such-source-{pipeline.tag}")
    assert missing.returncode == 1 and missing.stderr.startswith("error: NOT_FOUND: "), missing.stderr
    nowhere = pipeline.run("ingest", "folder", str(tmp_path / "absent"), "--camera", "c")
    assert nowhere.returncode == 1 and nowhere.stderr.startswith("error: "), nowhere.stderr
    unknown = pipeline.run("features", f"never-seen-{pipeline.tag}")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr, unknown.stderr
    # A key without the ingest scope is refused by the gateway: exit 4.
    denied = pipeline.run("ingest", "list", api_key=DETECT_KEY)
    assert denied.returncode == 4 and "PERMISSION_DENIED" in denied.stderr
