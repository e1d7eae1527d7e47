"""The ``carmesh`` CLI as a user runs it, against the real gateway in front of real daemons."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli.support import carmesh, constant_model
from tests.gateway.support import ADMIN_KEY, DETECT_KEY, READER_KEY, WRITER_KEY, run_gateway
from tests.helpers import SHARED, DaemonProcess, free_port
from tests.onnx_factory import write_yolox_model

pytest.importorskip("detector.app", reason="the detector daemon is not in this tree")


@pytest.fixture(scope="module")
def detect_gateway(keys_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = constant_model(tmp_path_factory.mktemp("cli-models") / "cli_model.onnx")
    with ExitStack() as stack:
        detector = stack.enter_context(DaemonProcess("detector", ["--model-path", str(model), "--metrics-port", "0"]))
        gateway = stack.enter_context(run_gateway(keys_file, f"127.0.0.1:{free_port()}", detector.address))
        yield gateway.address


def test_detect_json_lines_and_annotated_jpegs(detect_gateway, tmp_path):
    Image.new("RGB", (128, 96), (50, 60, 70)).save(tmp_path / "first.png")
    Image.new("RGB", (256, 192), (50, 60, 70)).save(tmp_path / "second.jpg")
    out = tmp_path / "annotated"
    result = carmesh(
        "detect",
        str(tmp_path / "first.png"),
        str(tmp_path / "second.jpg"),
        "--json",
        "--out",
        str(out),
        gateway=detect_gateway,
        api_key=DETECT_KEY,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["image"]).name for r in records] == ["first.png", "second.jpg"]
    assert [(r["width"], r["height"]) for r in records] == [(128, 96), (256, 192)]
    assert records[0]["model"]["name"] == "cli_model"
    assert [(d["class_name"], d["score"]) for d in records[0]["detections"]] == [("car", 0.9), ("truck", 0.6)]
    assert records[0]["detections"][0]["box"] == pytest.approx([44, 28, 84, 68], abs=0.5)
    for record, size in zip(records, [(128, 96), (256, 192)], strict=True):
        with Image.open(record["annotated"]) as annotated:
            assert annotated.format == "JPEG" and annotated.size == size
    assert sorted(p.name for p in out.iterdir()) == ["first.jpg", "second.jpg"]


def test_detect_table_with_filters(detect_gateway, tmp_path):
    Image.new("RGB", (128, 96)).save(tmp_path / "frame.png")
    out = tmp_path / "out"
    result = carmesh(
        "detect",
        str(tmp_path / "frame.png"),
        "--classes",
        "truck",
        "--score-threshold",
        "0.3",
        "--out",
        str(out),
        gateway=detect_gateway,
        api_key=DETECT_KEY,
    )
    assert result.returncode == 0, result.stderr
    assert "frame.png: 128x96, 1 detection by cli_model" in result.stdout
    assert "truck" in result.stdout and " car " not in result.stdout
    assert f"annotated: {out / 'frame.jpg'}" in result.stdout
    with Image.open(out / "frame.jpg") as annotated:
        assert annotated.format == "JPEG" and annotated.size == (128, 96)


def test_bad_image_fails_alone_with_its_status(detect_gateway, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"this is not an image")
    Image.new("RGB", (64, 64)).save(tmp_path / "good.png")
    result = carmesh(
        "detect",
        str(tmp_path / "broken.jpg"),
        str(tmp_path / "good.png"),
        "--json",
        gateway=detect_gateway,
        api_key=DETECT_KEY,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: INVALID_ARGUMENT: ")
    assert "broken.jpg" in result.stderr
    assert [Path(json.loads(line)["image"]).name for line in result.stdout.splitlines()] == ["good.png"]


def test_output_file_holds_the_result_and_only_after_success(detect_gateway, tmp_path):
    """Scripts read results from `--output FILE`, never from captured stdout (the demo broke that way)."""
    Image.new("RGB", (64, 64)).save(tmp_path / "good.png")
    result_file = tmp_path / "result.json"
    result = carmesh(
        "detect",
        str(tmp_path / "good.png"),
        "--json",
        "--output",
        str(result_file),
        gateway=detect_gateway,
        api_key=DETECT_KEY,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    records = [json.loads(line) for line in result_file.read_text().splitlines()]
    assert [Path(r["image"]).name for r in records] == ["good.png"]

    (tmp_path / "broken.jpg").write_bytes(b"this is not an image")
    failed = carmesh(
        "detect",
        str(tmp_path / "good.png"),
        str(tmp_path / "broken.jpg"),
        "--json",
        "--output",
        str(result_file),
        gateway=detect_gateway,
        api_key=DETECT_KEY,
    )
    assert failed.returncode == 1 and failed.stderr.startswith("error: INVALID_ARGUMENT: ")
    assert not result_file.exists(), "a failed command must not leave a result (nor the previous one) behind"
    assert list(tmp_path.glob(".*partial")) == []

    unwritable = carmesh(
        "detect",
        str(tmp_path / "good.png"),
        "--output",
        str(tmp_path / "no" / "dir" / "r.json"),
        gateway=detect_gateway,
        api_key=DETECT_KEY,
    )
    assert unwritable.returncode == 2 and "cannot write --output" in unwritable.stderr


@pytest.mark.parametrize(
    ("api_key", "status"),
    [(None, "UNAUTHENTICATED"), ("wrong-key-0123456789abc", "UNAUTHENTICATED"), (READER_KEY, "PERMISSION_DENIED")],
)
def test_auth_failures_exit_4(detect_gateway, tmp_path, api_key, status):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    result = carmesh("detect", str(tmp_path / "a.png"), gateway=detect_gateway, api_key=api_key)
    assert result.returncode == 4
    assert result.stderr.startswith(f"error: {status}: ")
    assert result.stdout == ""


def test_detect_cars_in_a_real_frame_with_yolox_nano(keys_file, tmp_path):
    model = SHARED / "models" / "yolox_nano.onnx"
    image = SHARED / "data" / "apollo-cars" / "val" / "images" / "000000.jpg"
    if not model.is_file() or not image.is_file():
        pytest.skip(f"{SHARED} (yolox_nano.onnx, apollo-cars) not present")
    from carmesh_cli.names import COCO_NAMES

    args = [
        "--model-path",
        str(model),
        "--model-family",
        "yolox",
        "--class-names",
        ",".join(COCO_NAMES),
        "--metrics-port",
        "0",
    ]
    with (
        DaemonProcess("detector", args) as detector,
        run_gateway(keys_file, f"127.0.0.1:{free_port()}", detector.address) as gateway,
    ):
        result = carmesh(
            "detect",
            str(image),
            "--json",
            "--classes",
            "car",
            "--out",
            str(tmp_path),
            gateway=gateway.address,
            api_key=DETECT_KEY,
        )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["width"], record["height"]) == (1920, 1080)
    assert record["detections"] and {d["class_name"] for d in record["detections"]} == {"car"}
    with Image.open(tmp_path / "000000.jpg") as annotated:
        assert annotated.size == (1920, 1080)


# --- models: the real registry_gateway on the session's MLflow server, behind the gateway ---


@pytest.fixture(scope="module")
def registry_gateway(keys_file: Path, mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("registry_gateway.app", reason="the registry_gateway daemon is not in this tree")
    cache = tmp_path_factory.mktemp("registry-cache")
    args = ["--mlflow-tracking-uri", mlflow_uri, "--cache-dir", str(cache), "--metrics-port", "0"]
    with (
        DaemonProcess("registry_gateway", args, timeout_s=90) as registry,
        run_gateway(keys_file, registry.address) as gateway,
    ):
        yield gateway.address


def test_models_import_list_promote_rollback(registry_gateway, tmp_path):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    first = constant_model(tmp_path / "first.onnx", score=0.9, anchors=8)
    second = constant_model(tmp_path / "second.onnx", score=0.8)

    # As in the README: no --family, the registry detects YOLOv8 from the layout.
    imported = carmesh(
        "models",
        "import",
        str(first),
        "--name",
        name,
        "--alias",
        "champion",
        gateway=registry_gateway,
        api_key=WRITER_KEY,
    )
    assert imported.returncode == 0, imported.stderr
    assert f"imported {name} version 1 (yolov8, 2 classes" in imported.stdout
    assert f"{name}: champion -> version 1" in imported.stdout
    assert "100%" in imported.stderr  # the progress bar's last line

    imported = carmesh(
        "models",
        "import",
        str(second),
        "--name",
        name,
        "--family",
        "yolov8",
        gateway=registry_gateway,
        api_key=WRITER_KEY,
    )
    assert imported.returncode == 0, imported.stderr
    assert f"imported {name} version 2" in imported.stdout

    # The gate: neither version was evaluated, so champion does not move without --force.
    refused = carmesh("models", "promote", name, "2", gateway=registry_gateway, api_key=WRITER_KEY)
    assert refused.returncode == 1
    assert f"{name} version 2 has no evaluation to compare" in refused.stderr and "--force" in refused.stderr
    promoted = carmesh("models", "promote", name, "2", "--force", gateway=registry_gateway, api_key=WRITER_KEY)
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip() == f"{name}: champion -> version 2 (was version 1)"

    listed = carmesh("models", "list", "--json", gateway=registry_gateway, api_key=READER_KEY)
    assert listed.returncode == 0, listed.stderr
    model = next(m for m in map(json.loads, listed.stdout.splitlines()) if m["name"] == name)
    assert model["aliases"] == {"champion": "2"}

    rolled = carmesh("models", "rollback", name, gateway=registry_gateway, api_key=WRITER_KEY)
    assert rolled.returncode == 0, rolled.stderr
    assert rolled.stdout.strip() == f"{name}: champion rolled back from version 2 to version 1"

    versions = carmesh("models", "versions", name, gateway=registry_gateway, api_key=READER_KEY)
    assert versions.returncode == 0, versions.stderr
    rows = {line.split()[0]: line for line in versions.stdout.splitlines()[1:]}
    assert set(rows) == {"1", "2"}
    assert all("yolov8" in row and "64x64" in row for row in rows.values())

    # One page at a time: the next page's token goes to stderr, so stdout stays a table.
    page = carmesh("models", "versions", name, "--page-size", "1", gateway=registry_gateway, api_key=READER_KEY)
    assert page.returncode == 0, page.stderr
    assert [line.split()[0] for line in page.stdout.splitlines()[1:]] == ["2"]  # newest first
    token = page.stderr.split("next page: --page-token ")[1].split()[0]
    args = ("--page-size", "1", "--page-token", token)
    page = carmesh("models", "versions", name, *args, gateway=registry_gateway, api_key=READER_KEY)
    assert page.returncode == 0, page.stderr
    assert [line.split()[0] for line in page.stdout.splitlines()[1:]] == ["1"] and "next page" not in page.stderr
    bad = carmesh("models", "versions", name, "--page-token", "nonsense", gateway=registry_gateway, api_key=READER_KEY)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "malformed" in bad.stderr

    table = carmesh("models", "list", gateway=registry_gateway, api_key=READER_KEY)
    assert any(line.split()[0] == name and "champion=1" in line for line in table.stdout.splitlines())


def test_models_import_with_the_coco_preset(registry_gateway, tmp_path):
    name = f"cli-yolox-{uuid.uuid4().hex[:8]}"
    # A YOLOX-layout model has no names metadata: the 80 COCO names come from the preset.
    anchors = sum((64 // stride) ** 2 for stride in (8, 16, 32))
    model = write_yolox_model(tmp_path / "yolox.onnx", np.zeros((1, anchors, 85), np.float32), (64, 64))
    imported = carmesh(
        "models",
        "import",
        str(model),
        "--name",
        name,
        "--family",
        "yolox",
        "--names",
        "coco",
        gateway=registry_gateway,
        api_key=ADMIN_KEY,
    )
    assert imported.returncode == 0, imported.stderr
    versions = carmesh("models", "versions", name, "--json", gateway=registry_gateway, api_key=READER_KEY)
    version = json.loads(versions.stdout.splitlines()[0])
    assert len(version["class_names"]) == 80 and version["class_names"][2] == "car"
    assert version["family"] == "MODEL_FAMILY_YOLOX"


def test_models_errors(registry_gateway, tmp_path):
    missing = carmesh("models", "promote", "no-such-model-xyz", "1", gateway=registry_gateway, api_key=WRITER_KEY)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: NOT_FOUND: ")
    denied = carmesh("models", "promote", "no-such-model-xyz", "1", gateway=registry_gateway, api_key=READER_KEY)
    assert denied.returncode == 4
    assert denied.stderr.startswith("error: PERMISSION_DENIED: ")
    bad_file = carmesh(
        "models",
        "import",
        str(tmp_path / "absent.onnx"),
        "--family",
        "yolov8",
        gateway=registry_gateway,
        api_key=WRITER_KEY,
    )
    assert bad_file.returncode == 2
    assert "no such model file" in bad_file.stderr
