"""ImportDataset through `python -m ingestor` against the real local broker, read back from the topic."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from carmesh.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc
from kit.clients import insecure_channel
from tests.helpers import REPO_ROOT, DaemonProcess
from tests.ingestor import datasets
from tests.ingestor.support import (
    APOLLO_SUBDIR,
    class_counts,
    ingestor,
    jpeg,
    kitti_class_counts,
    read_topic,
    small_apollo_frames,
    unique_topic,
)
from tests.paging import assert_bad_pages_refused, assert_pages_cover

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ingest-data")


@pytest.fixture(scope="module")
def daemon(kafka_bootstrap: str, shared_dir: Path, data_root: Path) -> Iterator[tuple[DaemonProcess, str]]:
    topic = unique_topic("import")
    roots = f"{data_root},{shared_dir / 'data'}"
    with ingestor(kafka_bootstrap, topic, "--allowed-roots", roots, "--progress-interval-ms", "100") as proc:
        yield proc, topic


async def run_import(address: str, **fields: object) -> list[ingest_pb2.ImportDatasetResponse]:
    async with insecure_channel(address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        request = ingest_pb2.ImportDatasetRequest(**fields)  # type: ignore[arg-type]
        return [p async for p in stub.ImportDataset(request, timeout=120)]


async def import_error(address: str, **fields: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run_import(address, **fields)
    return err.value


def kitti_boxes(label: Path) -> list[tuple[str, bool, float, float, float, float]]:
    out = []
    for line in label.read_text().splitlines():
        parts = line.split()
        if parts:
            x1, y1, x2, y2 = (float(v) for v in parts[4:8])
            out.append((parts[0], parts[0] == "ignore", x1, y1, x2, y2))
    return sorted(out)


def frame_boxes(frame: common_pb2.Frame) -> list[tuple[str, bool, float, float, float, float]]:
    return sorted((a.class_name, a.ignore, a.box.x1, a.box.y1, a.box.x2, a.box.y2) for a in frame.annotations)


def check_apollo_frames(frames: list[common_pb2.Frame], root: Path, names: list[str]) -> None:
    for frame in frames:
        source = Path(frame.source)
        split = source.parent.parent.name
        assert frame.image == source.read_bytes(), f"{source} was not passed through byte for byte"
        assert (frame.width, frame.height, frame.encoding) == (1920, 1080, common_pb2.IMAGE_ENCODING_JPEG)
        assert frame.split == {"train": common_pb2.SPLIT_TRAIN, "val": common_pb2.SPLIT_VAL}[split]
        assert frame.camera_id == "apollo-e2e" and frame.captured_at.seconds > 0
        expected = kitti_boxes(root / split / "labels" / f"{source.stem}.txt")
        got = frame_boxes(frame)
        assert [g[:2] for g in got] == [e[:2] for e in expected]
        assert np.allclose([g[2:] for g in got], [e[2:] for e in expected], atol=1e-3) or not expected
        assert all(names[a.class_id] == a.class_name for a in frame.annotations)


def of_dataset(name: str) -> Callable[[common_pb2.Frame], bool]:
    return lambda frame: frame.dataset == name


async def test_apollo_kitti_import_publishes_every_frame_and_box_unchanged(
    daemon: tuple[DaemonProcess, str], kafka_bootstrap: str, shared_dir: Path
) -> None:
    proc, topic = daemon
    root = shared_dir / APOLLO_SUBDIR
    truth = kitti_class_counts(root)
    progress = await run_import(
        proc.address, format=ingest_pb2.DATASET_FORMAT_KITTI, path=str(root), dataset="apollo-e2e"
    )
    last = progress[-1]
    assert last.done and not any(p.done for p in progress[:-1])
    assert (last.frames_total, last.frames_published, last.frames_skipped, last.frames_buffered) == (148, 148, 0, 0)
    assert last.annotations_published == sum(truth.values())
    assert list(last.class_names) == sorted(truth)

    frames = await read_topic(kafka_bootstrap, topic, of_dataset("apollo-e2e"), lambda got: len(got) >= 148)
    assert len(frames) == 148 and len({f.frame_id for f in frames}) == 148
    assert class_counts(frames) == truth
    check_apollo_frames(frames, root, list(last.class_names))

    # A re-import publishes the same frame ids: consumers dedupe by frame_id.
    again = await run_import(proc.address, format=ingest_pb2.DATASET_FORMAT_KITTI, path=str(root), dataset="apollo-e2e")
    assert again[-1].done and again[-1].frames_published == 148
    both = await read_topic(kafka_bootstrap, topic, of_dataset("apollo-e2e"), lambda got: len(got) >= 296)
    assert len(both) == 296 and {f.frame_id for f in both} == {f.frame_id for f in frames}


WRITERS = {
    "yolo": (ingest_pb2.DATASET_FORMAT_YOLO, lambda root, images: (root, datasets.write_yolo(root, images))),
    "coco": (ingest_pb2.DATASET_FORMAT_COCO, lambda root, images: (root, datasets.write_coco(root, images))),
    "voc": (ingest_pb2.DATASET_FORMAT_VOC, lambda root, images: (root, datasets.write_voc(root, images))),
    "csv": (ingest_pb2.DATASET_FORMAT_CSV, lambda root, images: datasets.write_csv(root, images)),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
async def test_each_format_with_class_mapping(
    name: str, daemon: tuple[DaemonProcess, str], kafka_bootstrap: str, shared_dir: Path, data_root: Path
) -> None:
    proc, topic = daemon
    fmt, write = WRITERS[name]
    images = small_apollo_frames(shared_dir, 4)
    path, written = write(data_root / name, images)
    dataset = f"fixture-{name}"
    progress = await run_import(proc.address, format=fmt, path=str(path), dataset=dataset, class_map=datasets.CLASS_MAP)
    last = progress[-1]
    want = datasets.expected_counts(datasets.CLASS_MAP)
    assert last.done and (last.frames_total, last.frames_published, last.frames_skipped) == (4, 4, 0)
    assert last.annotations_published == sum(want.values())
    assert list(last.class_names) == ["car", "truck"]

    frames = await read_topic(kafka_bootstrap, topic, of_dataset(dataset), lambda got: len(got) >= 4)
    assert len(frames) == 4
    assert class_counts(frames) == want
    for frame in frames:
        file_name = Path(frame.source).name
        truth = next(t for t in datasets.TRUTH if datasets.file_name(t) == file_name)
        assert frame.image == written[file_name]
        assert frame.encoding == (common_pb2.IMAGE_ENCODING_PNG if truth.png else common_pb2.IMAGE_ENCODING_JPEG)
        assert (frame.width, frame.height) == (640, 360)
        assert frame.split == datasets.SPLITS[truth.split]
        got = sorted((a.class_name, a.box.x1, a.box.y1, a.box.x2, a.box.y2) for a in frame.annotations)
        want_boxes = datasets.expected_boxes(truth.name, datasets.CLASS_MAP)
        assert [g[0] for g in got] == [w[0] for w in want_boxes]
        assert np.allclose([g[1:] for g in got], [w[1:] for w in want_boxes], atol=0.01) or not want_boxes


async def test_bad_requests_get_clear_statuses(
    daemon: tuple[DaemonProcess, str], shared_dir: Path, data_root: Path
) -> None:
    proc, _ = daemon
    err = await import_error(proc.address, format=ingest_pb2.DATASET_FORMAT_UNSPECIFIED, path=str(data_root))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "DATASET_FORMAT_YOLO" in (err.details() or "")
    err = await import_error(proc.address, format=ingest_pb2.DATASET_FORMAT_KITTI, path=str(data_root / "missing"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "does not exist" in (err.details() or "")
    err = await import_error(proc.address, format=ingest_pb2.DATASET_FORMAT_KITTI, path=str(REPO_ROOT))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "allowed roots" in (err.details() or "")
    err = await import_error(proc.address, format=ingest_pb2.DATASET_FORMAT_KITTI, path="relative/path")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    bare = data_root / "yolo-no-names"
    (bare / "images").mkdir(parents=True)
    (bare / "images" / "x.jpg").write_bytes(jpeg(small_apollo_frames(shared_dir, 1)[0]))
    err = await import_error(proc.address, format=ingest_pb2.DATASET_FORMAT_YOLO, path=str(bare))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "class_names" in (err.details() or "")


async def test_unreadable_images_are_skipped_with_reasons(
    daemon: tuple[DaemonProcess, str], kafka_bootstrap: str, shared_dir: Path, data_root: Path
) -> None:
    proc, topic = daemon
    root = data_root / "kitti-broken"
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
    good = sorted((shared_dir / APOLLO_SUBDIR / "train" / "images").glob("*.jpg"))[0]
    (root / "train" / "images" / "good.jpg").write_bytes(good.read_bytes())
    (root / "train" / "labels" / "good.txt").write_text("car 0 0 0 10 20 110 90\n")
    (root / "val" / "images" / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    (root / "val" / "images" / "badlabel.jpg").write_bytes(good.read_bytes())
    (root / "val" / "labels" / "badlabel.txt").write_text("car 0 0 0 ten 20 110 90\n")
    progress = await run_import(proc.address, format=ingest_pb2.DATASET_FORMAT_KITTI, path=str(root), dataset="broken")
    last = progress[-1]
    assert last.done and (last.frames_total, last.frames_published, last.frames_skipped) == (3, 1, 2)
    reasons = " | ".join(last.skip_reasons)
    assert (
        "corrupt.jpg" in reasons
        and "not a readable image" in reasons
        and "coordinate is not a number" in reasons
        and "ten" not in reasons
    )
    frames = await read_topic(kafka_bootstrap, topic, of_dataset("broken"), lambda got: len(got) >= 1)
    assert [Path(f.source).name for f in frames] == ["good.jpg"]


async def test_list_sources_pages_through_every_source_once(
    daemon: tuple[DaemonProcess, str], shared_dir: Path, data_root: Path
) -> None:
    proc, _ = daemon
    folder = data_root / "one-frame"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg(small_apollo_frames(shared_dir, 1)[0]))
    spec = ingest_pb2.SourceSpec(kind=ingest_pb2.SOURCE_KIND_IMAGE_FOLDER, uri=str(folder))
    async with insecure_channel(proc.address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        started = [
            (await stub.StartSource(ingest_pb2.StartSourceRequest(spec=spec), timeout=10)).source for _ in range(5)
        ]
        listed = await assert_pages_cover(
            stub.ListSources, ingest_pb2.ListSourcesRequest(), "sources", lambda s: s.source_id, 5
        )
        assert {s.source_id for s in started} <= {s.source_id for s in listed}
        await assert_bad_pages_refused(stub.ListSources, ingest_pb2.ListSourcesRequest())
