"""The CLI without a gateway: argument parsing, class-name presets, drawing, output, exit codes."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from carmesh.v1 import common_pb2, detector_pb2, registry_pb2, training_pb2
from carmesh_cli.connection import EXIT_UNREACHABLE, EXIT_USAGE, CliError
from carmesh_cli.detect import as_record, expand_images, format_table, output_paths
from carmesh_cli.draw import Box, annotate, save_jpeg
from carmesh_cli.main import build_parser, main
from carmesh_cli.models import import_requests
from carmesh_cli.names import COCO_NAMES, NamesError, parse_names
from carmesh_cli.progress import ProgressBar
from carmesh_cli.train import duration_s, request_of
from tests.helpers import free_port


def png(path: Path, size: tuple[int, int] = (320, 200), colour: tuple[int, int, int] = (20, 20, 20)) -> Path:
    Image.new("RGB", size, colour).save(path, format="PNG")
    return path


def test_detect_arguments_parse_in_any_order():
    args = build_parser().parse_args(
        [
            "--gateway",
            "gw:1",
            "detect",
            "a.jpg",
            "b.jpg",
            "--json",
            "--out",
            "o",
            "--score-threshold",
            "0.4",
            "--iou-threshold",
            "0.5",
            "--classes",
            "car, truck",
            "--timeout",
            "2.5",
            "--api-key",
            "k",
        ]
    )
    assert args.images == ["a.jpg", "b.jpg"]
    assert args.json and args.out == Path("o")
    assert (args.score_threshold, args.iou_threshold) == (0.4, 0.5)
    assert args.classes == ["car", "truck"]
    assert (args.gateway, args.api_key, args.timeout) == ("gw:1", "k", 2.5)
    later = build_parser().parse_args(["detect", "a.jpg", "--gateway", "gw:2"])
    assert later.gateway == "gw:2"
    assert not hasattr(later, "api_key")  # unset: falls back to $CARMESH_API_KEY


def test_models_arguments():
    parser = build_parser()
    imp = parser.parse_args(
        ["models", "import", "m.onnx", "--family", "yolox", "--names", "coco", "--alias", "champion"]
    )
    assert (imp.action, imp.path, imp.family, imp.names, imp.alias, imp.name) == (
        "import",
        Path("m.onnx"),
        "yolox",
        "coco",
        "champion",
        "car-detector",
    )
    # Without --family the registry tells the layout apart itself.
    assert parser.parse_args(["models", "import", "m.onnx"]).family == "auto"
    promote = parser.parse_args(["models", "promote", "car-detector", "3"])
    assert (promote.name, promote.version, promote.alias) == ("car-detector", "3", "champion")
    rollback = parser.parse_args(["models", "rollback", "car-detector", "--alias", "canary"])
    assert rollback.alias == "canary"


def test_train_max_duration_takes_the_readme_units():
    assert duration_s("28m") == 1680
    assert (duration_s("90"), duration_s("90s"), duration_s("1.5h"), duration_s("0.25m")) == (90, 90, 5400, 15)
    for bad in ("28 min", "-5m", "0.5s", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            duration_s(bad)
    args = build_parser().parse_args(
        ["train", "apollo-snap", "--classes", "car", "--ignore-classes", "van,truck,bus", "--max-duration", "28m"]
    )
    request = request_of(args)
    assert (request.dataset, request.config.max_duration_s, request.workers) == ("apollo-snap", 1680, 1)
    assert (list(request.config.classes), list(request.config.ignore_classes)) == (["car"], ["van", "truck", "bus"])
    assert request.config.precision == training_pb2.EXPORT_PRECISION_UNSPECIFIED  # the trainer's default
    asked = {"int8": training_pb2.EXPORT_PRECISION_INT8, "float32": training_pb2.EXPORT_PRECISION_FLOAT32}
    for name, value in asked.items():
        assert request_of(build_parser().parse_args(["train", "snap", "--precision", name])).config.precision == value
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "snap", "--precision", "fp16"])


@pytest.mark.parametrize(
    "argv",
    [
        ["detect"],
        ["detect", "a.jpg", "--score-threshold", "1.5"],
        ["detect", "a.jpg", "--iou-threshold", "x"],
        ["detect", "a.jpg", "--timeout", "0"],
        ["detect", "a.jpg", "--max-detections", "-1"],
        ["models", "import", "m.onnx", "--family", "resnet"],
        ["models", "promote", "car-detector"],
        ["models", "list", "--page-size", "-1"],
        ["jobs", "list", "--page-size", "x"],
        ["teleport"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv, env={}) == EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


def test_help_lists_exit_codes(capsys):
    assert main(["--help"], env={}) == 0
    out = capsys.readouterr().out
    for line in ("0  success", "1  a call failed", "2  bad arguments", "3  nothing answers", "4  the API key"):
        assert line in out


def test_coco_preset():
    names = parse_names("coco")
    assert len(names) == 80 == len(set(names))
    assert names[0] == "person" and names[2] == "car" and names[7] == "truck" and names[79] == "toothbrush"
    assert tuple(names) == COCO_NAMES


def test_names_from_list_and_file(tmp_path):
    assert parse_names("car, truck,bus") == ["car", "truck", "bus"]
    assert parse_names("car") == ["car"]
    path = tmp_path / "names.txt"
    path.write_text("# my classes\ncar\n\ntraffic light  # with a space\n")
    assert parse_names(str(path)) == ["car", "traffic light"]
    for bad in ("car,,truck", "car,car"):
        with pytest.raises(NamesError):
            parse_names(bad)


def test_bad_names_are_a_usage_error_before_any_call(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    argv = [
        "models",
        "import",
        str(model),
        "--family",
        "yolov8",
        "--names",
        "car,car",
        "--gateway",
        f"127.0.0.1:{free_port()}",
    ]
    assert main(argv, env={}) == EXIT_USAGE
    assert "duplicate class names" in capsys.readouterr().err


def test_annotate_draws_boxes_and_keeps_the_size(tmp_path):
    source = png(tmp_path / "frame.png")
    boxes = [
        Box(40, 60, 200, 180, "car", 0.91, 2),
        Box(0, 0, 50, 40, "truck", 0.55, 7),  # touches the top edge: label goes inside
    ]
    out = tmp_path / "out" / "frame.jpg"
    save_jpeg(annotate(source.read_bytes(), boxes, (320, 200)), out)
    with Image.open(out) as result:
        assert result.format == "JPEG"
        assert result.size == (320, 200)
        pixels = result.convert("RGB")
        # The box outline is drawn in the class colour; the middle of the box is untouched.
        assert sum(pixels.getpixel((120, 180))) > 3 * 60
        assert sum(pixels.getpixel((120, 120))) < 3 * 40
        # The label background sits above the car box.
        assert sum(pixels.getpixel((45, 55))) > 3 * 60


def test_output_paths_are_named_after_inputs_without_clashes(tmp_path):
    images = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.jpg", tmp_path / "y.jpeg"]
    assert output_paths(images, tmp_path / "out") == [
        tmp_path / "out" / "x.jpg",
        tmp_path / "out" / "x-2.jpg",
        tmp_path / "out" / "y.jpg",
    ]
    # Writing into the input's own folder never overwrites the input.
    inside = tmp_path / "z.jpg"
    inside.write_bytes(b"")
    assert output_paths([inside], tmp_path) == [tmp_path / "z-2.jpg"]


def test_expand_images(tmp_path):
    png(tmp_path / "b.png")
    png(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    assert expand_images([str(tmp_path)]) == [tmp_path / "a.png", tmp_path / "b.png"]
    with pytest.raises(CliError) as err:
        expand_images([str(tmp_path / "missing.jpg")])
    assert err.value.exit_code == EXIT_USAGE


def test_table_and_json_records():
    reply = detector_pb2.DetectResponse(
        detections=[
            common_pb2.Detection(
                box=common_pb2.BoundingBox(x1=1, y1=2, x2=30, y2=40), score=0.875, class_id=2, class_name="car"
            )
        ],
        model=common_pb2.ModelRef(name="car-detector", version="3", alias="champion"),
        timings=detector_pb2.DetectTimings(total_ms=12.5, batch_size=1),
        image_width=640,
        image_height=480,
    )
    record = as_record(Path("img/a.jpg"), reply, Path("out/a.jpg"))
    assert json.loads(json.dumps(record))["detections"] == [
        {"class_id": 2, "class_name": "car", "score": 0.875, "box": [1.0, 2.0, 30.0, 40.0]}
    ]
    table = format_table(record)
    assert "img/a.jpg: 640x480, 1 detection by car-detector v3 @champion" in table
    assert "car" in table and "0.875" in table and "annotated: out/a.jpg" in table


def test_missing_image_is_a_usage_error_without_network(capsys):
    assert main(["detect", "/nonexistent/frame.jpg", "--gateway", f"127.0.0.1:{free_port()}"], env={}) == EXIT_USAGE
    assert "no such image" in capsys.readouterr().err


def test_unreachable_gateway_exits_3(tmp_path, capsys):
    image = png(tmp_path / "a.png")
    port = free_port()
    assert main(["detect", str(image), "--gateway", f"127.0.0.1:{port}", "--timeout", "1"], env={}) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert err.startswith("error: UNAVAILABLE: cannot reach the gateway at 127.0.0.1:")
    assert main(["models", "list", "--timeout", "1"], env={"CARMESH_GATEWAY": f"127.0.0.1:{port}"}) == EXIT_UNREACHABLE


def test_import_requests_send_metadata_then_the_file(tmp_path):
    data = bytes(range(256)) * 1000
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    stream = io.StringIO()
    progress = ProgressBar("uploading m.onnx", len(data), stream)
    meta = registry_pb2.ImportModelMetadata(name="car-detector", sha256=hashlib.sha256(data).hexdigest())
    messages = list(import_requests(path, meta, progress, chunk_bytes=100_000))
    assert messages[0].metadata == meta
    chunks = [m.chunk for m in messages[1:]]
    assert [len(c) for c in chunks] == [100_000, 100_000, 56_000]
    assert b"".join(chunks) == data
    progress.finish()
    assert stream.getvalue().strip().endswith("100% 256.0 KB/256.0 KB")


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "list"],
        ["models", "versions", "car-detector"],
        ["ingest", "list"],
        ["datasets", "list"],
        ["jobs", "list"],
    ],
)
def test_every_list_command_pages(argv):
    args = build_parser().parse_args([*argv, "--page-size", "5", "--page-token", "abc"])
    assert (args.page_size, args.page_token) == (5, "abc")
    assert build_parser().parse_args(argv).page_size == 0  # default: every page
