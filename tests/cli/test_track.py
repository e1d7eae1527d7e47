"""``carmesh track`` on the synthetic street video: counts exact from MOTChallenge detections,
the annotated video and the tracks file; and the same command against the real gateway and
detector (one Detect call per frame)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.cli.support import carmesh, constant_model
from tests.gateway.support import DETECT_KEY, run_gateway
from tests.helpers import DaemonProcess, free_port
from tracking.core import Track
from tracking.scenario import DetectionNoise, make_scenario, simulate_detections
from tracking.scoring import score
from tracking.synthetic import write_mot_detections, write_video

LINE = "gate:320,300,320,150"
ZONE = "bay:500,240,640,240,640,300,500,300"


@pytest.fixture(scope="module")
def street(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("street")
    scenario = make_scenario(0)
    video = root / "street.mp4"
    truth = write_video(scenario, video)
    detections = root / "det.txt"
    write_mot_detections(simulate_detections(scenario.truth(), DetectionNoise(), seed=0), detections)
    return video, truth, detections


def _frames(video: Path) -> tuple[int, tuple[int, int]]:
    capture = cv2.VideoCapture(str(video))
    count, size = 0, (0, 0)
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        count, size = count + 1, (frame.shape[1], frame.shape[0])
    capture.release()
    return count, size


def test_counts_exact_from_detections_with_video_and_tracks(street, tmp_path):
    video, truth_file, detections = street
    out, tracks = tmp_path / "annotated.mp4", tmp_path / "tracks.txt"
    args = ["track", str(video), "--detections", str(detections), "--class-names", "car,van"]
    result = carmesh(
        *args, "--line", LINE, "--zone", ZONE, "--out", str(out), "--tracks", str(tracks), "--json",
        gateway="127.0.0.1:1", api_key=None,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    truth = json.loads(truth_file.read_text())
    assert record["counts"] == truth["counts"]
    assert record["frames"] == 600 and record["occupancy"] == {"bay": 0}
    assert _frames(out) == (600, (640, 360))

    per_frame: list[list[Track]] = [[] for _ in range(600)]
    for line in tracks.read_text().splitlines():
        frame, tid, x, y, w, h, s = (float(v) for v in line.split(",")[:7])
        per_frame[int(frame) - 1].append(Track(int(tid), 0, (x, y, x + w, y + h), s, 0, 0.0, 0, 0.0))
    scores = score(make_scenario(0).truth(), per_frame, DetectionNoise().min_visibility)
    assert scores.idf1 >= 0.9, scores


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--line", "gate:0,0,700,0"], "outside the 640x360 frame"),
        (["--line", "gate:1,2,3"], "NAME:X1,Y1,X2,Y2"),
        (["--zone", "bay:0,0,10,10,10,0,0,10"], "must be simple"),
    ],
)
def test_bad_lines_and_zones_are_usage_errors(street, extra, message):
    video, _, detections = street
    result = carmesh("track", str(video), "--detections", str(detections), *extra, gateway="127.0.0.1:1", api_key=None)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_unreadable_inputs_are_usage_errors(street, tmp_path):
    video, _, _ = street
    bad = tmp_path / "det.txt"
    bad.write_text("1,-1,10,10,5,5,0.9\nnot,a,line\n")
    result = carmesh("track", str(video), "--detections", str(bad), gateway="127.0.0.1:1", api_key=None)
    assert result.returncode == 2 and f"{bad}:2" in result.stderr, result.stderr
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 1000)
    result = carmesh("track", str(tmp_path / "clip.mp4"), gateway="127.0.0.1:1", api_key=None)
    assert result.returncode == 2 and "cannot read" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def detect_gateway(keys_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = constant_model(tmp_path_factory.mktemp("track-models") / "track_model.onnx")
    with ExitStack() as stack:
        detector = stack.enter_context(DaemonProcess("detector", ["--model-path", str(model), "--metrics-port", "0"]))
        gateway = stack.enter_context(run_gateway(keys_file, f"127.0.0.1:{free_port()}", detector.address))
        yield gateway.address


def test_track_through_the_gateway(detect_gateway, tmp_path):
    """The constant model finds a car and a truck in the same place in every frame: two tracks
    held for the whole clip, nothing crossing."""
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"MJPG"), 10, (128, 96))
    for i in range(12):
        writer.write(np.full((96, 128, 3), 40 + 10 * i, np.uint8))
    writer.release()
    out, tracks = tmp_path / "annotated.mp4", tmp_path / "tracks.txt"
    result = carmesh(
        "track", str(clip), "--line", "gate:64,0,64,96", "--out", str(out), "--tracks", str(tracks), "--json",
        gateway=detect_gateway, api_key=DETECT_KEY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["frames"] == 12 and record["counts"] == []
    rows = [line.split(",") for line in tracks.read_text().splitlines()]
    assert {int(r[1]) for r in rows} == {0, 1}
    assert len(rows) == 2 * 11  # each confirmed from its second box on
    assert _frames(out) == (12, (128, 96))


def test_track_needs_a_key_with_the_detect_scope(detect_gateway, tmp_path):
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"MJPG"), 10, (128, 96))
    writer.write(np.zeros((96, 128, 3), np.uint8))
    writer.release()
    result = carmesh("track", str(clip), gateway=detect_gateway, api_key=None)
    assert result.returncode == 4, result.stderr
