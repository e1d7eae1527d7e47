"""Data set parsers, image headers and the path policy, on real files (no broker needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from carmesh.v1 import common_pb2
from ingestor.errors import PathNotAllowed, PathNotFound
from ingestor.frames import BadImage, ImageInfo, probe_image
from ingestor.importer import to_annotations
from ingestor.paths import PathPolicy
from kit.datasets import Parsed, ParseOptions, parse_dataset
from kit.errors import InvalidArgument
from kit.hashing import derive_frame_id
from tests.ingestor import datasets
from tests.ingestor.support import APOLLO_SUBDIR, jpeg, kitti_class_counts, png, small_apollo_frames

W, H = 640, 360


@pytest.fixture(scope="module")
def frames(shared_dir: Path) -> list[np.ndarray]:
    return small_apollo_frames(shared_dir, 4, (W, H))


def boxes_by_stem(parsed: Parsed) -> dict[str, list[tuple[str, float, float, float, float]]]:
    info = ImageInfo(common_pb2.IMAGE_ENCODING_JPEG, W, H)
    ids = {n: i for i, n in enumerate(parsed.class_names)}
    out = {}
    for item in parsed.items:
        anns = to_annotations(item, info, ids)
        out[Path(item.rel).stem] = sorted((a.class_name, a.box.x1, a.box.y1, a.box.x2, a.box.y2) for a in anns)
    return out


def assert_matches_truth(parsed: Parsed, class_map: dict[str, str] | None = None) -> None:
    assert parsed.skipped == []
    got = boxes_by_stem(parsed)
    assert sorted(got) == [t.name for t in datasets.TRUTH]
    for truth in datasets.TRUTH:
        want = datasets.expected_boxes(truth.name, class_map)
        assert [b[0] for b in got[truth.name]] == [b[0] for b in want], truth.name
        assert np.allclose([b[1:] for b in got[truth.name]], [b[1:] for b in want], atol=0.01) or not want
    splits = {Path(i.rel).stem: i.split for i in parsed.items}
    assert splits == {t.name: datasets.SPLITS[t.split] for t in datasets.TRUTH}


def test_kitti_apollo_every_labelled_box_per_class_and_split(shared_dir: Path) -> None:
    root = shared_dir / APOLLO_SUBDIR
    parsed = parse_dataset("kitti", root, ParseOptions())
    assert len(parsed.items) == 148 and parsed.skipped == []
    assert sum(i.split == common_pb2.SPLIT_TRAIN for i in parsed.items) == len(list((root / "train/images").glob("*")))
    assert sum(i.split == common_pb2.SPLIT_VAL for i in parsed.items) == len(list((root / "val/images").glob("*")))
    counts: dict[str, int] = {}
    for item in parsed.items:
        for box in item.boxes:
            counts[box.class_name] = counts.get(box.class_name, 0) + 1
            assert box.ignore == (box.class_name == "ignore")
    assert counts == kitti_class_counts(root)
    assert parsed.class_names == sorted(counts)


def test_kitti_class_map_renames_and_drops(shared_dir: Path) -> None:
    root = shared_dir / APOLLO_SUBDIR
    truth = kitti_class_counts(root)
    parsed = parse_dataset("kitti", root, ParseOptions(class_map={"van": "car", "trafficcone": ""}))
    counts: dict[str, int] = {}
    for item in parsed.items:
        for box in item.boxes:
            counts[box.class_name] = counts.get(box.class_name, 0) + 1
    assert counts["car"] == truth["car"] + truth["van"]
    assert "van" not in counts and "trafficcone" not in counts and "van" not in parsed.class_names
    assert parsed.boxes_dropped == truth["trafficcone"]


def test_yolo_with_data_yaml(tmp_path: Path, frames: list[np.ndarray]) -> None:
    datasets.write_yolo(tmp_path, frames)
    parsed = parse_dataset("yolo", tmp_path, ParseOptions())
    assert parsed.class_names == datasets.NAMES
    assert all(item.normalized for item in parsed.items)
    assert_matches_truth(parsed)
    mapped = parse_dataset("yolo", tmp_path, ParseOptions(class_map=datasets.CLASS_MAP))
    assert mapped.class_names == ["car", "truck"]
    assert_matches_truth(mapped, datasets.CLASS_MAP)


def test_yolo_class_names_from_request_or_classes_txt_else_an_error(tmp_path: Path, frames: list[np.ndarray]) -> None:
    datasets.write_yolo(tmp_path, frames, with_yaml=False)
    with pytest.raises(InvalidArgument, match="class_names"):
        parse_dataset("yolo", tmp_path, ParseOptions())
    assert_matches_truth(parse_dataset("yolo", tmp_path, ParseOptions(class_names=datasets.NAMES)))
    (tmp_path / "classes.txt").write_text("\n".join(datasets.NAMES) + "\n")
    assert_matches_truth(parse_dataset("yolo", tmp_path, ParseOptions()))


def test_yolo_bad_label_skips_only_that_image(tmp_path: Path, frames: list[np.ndarray]) -> None:
    datasets.write_yolo(tmp_path, frames)
    (tmp_path / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2\n")
    (tmp_path / "labels" / "val" / "d.txt").write_text("9 0.5 0.5 0.2 0.2\n")
    parsed = parse_dataset("yolo", tmp_path, ParseOptions())
    assert sorted(Path(i.rel).stem for i in parsed.items) == ["b", "c"]
    assert len(parsed.skipped) == 2
    assert any("a.jpg" in r and "a.txt line 1" in r for r in parsed.skipped)
    assert any("d.txt line 1: class id out of range" in r for r in parsed.skipped)


def test_coco(tmp_path: Path, frames: list[np.ndarray]) -> None:
    datasets.write_coco(tmp_path, frames)
    parsed = parse_dataset("coco", tmp_path, ParseOptions())
    assert parsed.class_names == datasets.NAMES  # category id order
    assert_matches_truth(parsed)
    mapped = parse_dataset("coco", tmp_path, ParseOptions(class_map=datasets.CLASS_MAP))
    assert_matches_truth(mapped, datasets.CLASS_MAP)
    one = parse_dataset("coco", tmp_path / "instances_val.json", ParseOptions())
    assert sorted(Path(i.rel).stem for i in one.items) == ["c", "d"]
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        parse_dataset("coco", tmp_path / "broken.json", ParseOptions())


def test_voc(tmp_path: Path, frames: list[np.ndarray]) -> None:
    datasets.write_voc(tmp_path, frames)
    assert_matches_truth(parse_dataset("voc", tmp_path, ParseOptions()))
    assert_matches_truth(parse_dataset("voc", tmp_path, ParseOptions(class_map=datasets.CLASS_MAP)), datasets.CLASS_MAP)


def test_voc_difficult_is_ignore_and_a_broken_xml_is_skipped(tmp_path: Path, frames: list[np.ndarray]) -> None:
    datasets.write_voc(tmp_path, frames)
    xml = tmp_path / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    (tmp_path / "Annotations" / "b.xml").write_text("<annotation><filename>b.png</filename><object>")
    parsed = parse_dataset("voc", tmp_path, ParseOptions())
    item = next(i for i in parsed.items if i.rel.endswith("a.jpg"))
    assert [b.ignore for b in item.boxes] == [True, False]
    assert len(parsed.skipped) == 1 and parsed.skipped[0].startswith("Annotations/b.xml")


@pytest.mark.parametrize("header", [True, False])
def test_csv(tmp_path: Path, frames: list[np.ndarray], header: bool) -> None:
    path, _ = datasets.write_csv(tmp_path, frames, header=header)
    default = common_pb2.SPLIT_VAL
    parsed = parse_dataset("csv", path, ParseOptions(class_map=datasets.CLASS_MAP, default_split=default))
    if header:
        assert_matches_truth(parsed, datasets.CLASS_MAP)
    else:  # no split column: every image gets the default split
        assert {i.split for i in parsed.items} == {default}
        got = boxes_by_stem(parsed)
        assert {k: [b[0] for b in v] for k, v in got.items()} == {
            t.name: [b[0] for b in datasets.expected_boxes(t.name, datasets.CLASS_MAP)] for t in datasets.TRUTH
        }


def test_csv_header_without_box_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("filename,class\na.jpg,car\n")
    with pytest.raises(InvalidArgument, match="xmin"):
        parse_dataset("csv", tmp_path / "x.csv", ParseOptions())


def test_unknown_format_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="unknown data set format"):
        parse_dataset("labelme", tmp_path, ParseOptions())
    with pytest.raises(InvalidArgument, match="no images"):
        parse_dataset("kitti", tmp_path, ParseOptions())


def test_probe_reads_headers_only(frames: list[np.ndarray]) -> None:
    assert probe_image(jpeg(frames[0])) == ImageInfo(common_pb2.IMAGE_ENCODING_JPEG, W, H)
    assert probe_image(png(frames[0])) == ImageInfo(common_pb2.IMAGE_ENCODING_PNG, W, H)
    # A truncated JPEG still has its header: size is known without decoding the pixels.
    assert probe_image(jpeg(frames[0])[:2000]).width == W
    for bad in (b"", b"not an image at all"):
        with pytest.raises(BadImage):
            probe_image(bad)


def test_frame_ids_are_stable_and_bound_to_namespace_and_bytes() -> None:
    image = b"\xff\xd8 same bytes"
    one = derive_frame_id(("dataset", "d", "a.jpg"), image)
    assert one == derive_frame_id(("dataset", "d", "a.jpg"), image) and len(one) == 32
    assert one != derive_frame_id(("dataset", "d2", "a.jpg"), image)
    assert one != derive_frame_id(("dataset", "d", "a.jpg"), image + b"!")
    # No choice of parts or bytes makes one namespace hash like another.
    assert derive_frame_id(("a", "bc"), b"") != derive_frame_id(("ab", "c"), b"")
    assert derive_frame_id(("a",), b"b") != derive_frame_id(("a", "b"), b"")
    assert derive_frame_id(("client", "alice", "cam", "x"), image) != derive_frame_id(("dataset", "cam", "x"), image)


def test_path_policy(tmp_path: Path) -> None:
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"x")
    (inside / "link").symlink_to(outside)
    policy = PathPolicy([inside])
    assert policy.check(str(inside), "p") == inside.resolve()
    with pytest.raises(PathNotAllowed, match="allowed roots"):
        policy.check(str(outside), "p")
    with pytest.raises(PathNotAllowed):
        policy.check(str(inside / "link" / "secret.jpg"), "p")
    with pytest.raises(PathNotAllowed):
        policy.check(str(inside / ".." / "out"), "p")
    with pytest.raises(PathNotFound):
        policy.check(str(inside / "missing"), "p")
    with pytest.raises(InvalidArgument, match="relative"):
        policy.check("in/x", "p")
    # No roots configured: no request path at all, and the refusal names the setting to set.
    with pytest.raises(PathNotAllowed, match="--allowed-roots"):
        PathPolicy([]).check(str(outside), "p")
