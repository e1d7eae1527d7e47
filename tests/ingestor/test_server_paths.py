"""Issue 16, hole 1: ImportDataset must not disclose server files. Through the real gateway with an
``ingest`` key: no message, progress or skip reason carries a byte of a secret file whatever the
format, a path outside the ingestor's roots (or a symlink inside them leading out) is refused, and
an ingestor without roots reads no request path at all."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from carmesh.v1 import ingest_pb2, ingest_pb2_grpc
from kit.clients import insecure_channel
from tests.gateway.support import bearer, run_gateway
from tests.helpers import free_port
from tests.ingestor.support import ingestor, jpeg, small_apollo_frames, unique_topic

pytestmark = pytest.mark.e2e

INGEST_KEY = "cm_ingest_only_" + "k" * 24


@dataclass(frozen=True)
class Setup:
    gateway: str
    root: Path  # the ingestor's only allowed root
    outside: Path  # a run dir beside it, as `make up` keeps .run/api-key
    token: str  # the secret's random part: none of it may come back


def secret_text(token: str) -> str:
    # Shaped like .run/api-key and .run/api-keys, plus lines that look like each format's labels.
    return "\n".join(
        [
            f"cm_{token}",
            f"cm_{token} local-admin *",
            f"cm_{token},1,2,30,40,car",
            f"car 0 0 0 {token} 1 2 3",
            f"0 {token} 0.5 0.1 0.1",
            f"names: {token}: [",
            "",
        ]
    )


@pytest.fixture(scope="module")
def setup(kafka_bootstrap: str, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("server-paths")
    root, outside = base / "data", base / "run"
    root.mkdir()
    outside.mkdir()
    token = secrets.token_hex(16)
    secret = secret_text(token)
    (outside / "api-key").write_text(secret)
    # An operator's mistake the messages must survive: the secret copied into the data root, as a
    # file and as the label/annotation files of every folder format.
    (root / "api-key").write_text(secret)
    image = jpeg(small_apollo_frames(shared_dir, 1, (320, 180))[0])
    for rel in ("kitti/train/images/a.jpg", "yolo/images/train/a.jpg", "yolo-yaml/images/train/a.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(image)
    for rel in ("kitti/train/labels/a.txt", "yolo/labels/train/a.txt", "yolo-yaml/data.yaml", "voc/Annotations/a.xml"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(secret)
    (root / "yolo" / "classes.txt").write_text("car\n")
    (root / "link").symlink_to(outside)
    (root / "key-link.csv").symlink_to(outside / "api-key")
    keys = base / "api-keys"
    keys.write_text(f"{INGEST_KEY} importer ingest,ingest.import\n")  # ImportDataset takes ingest.import
    with (
        ingestor(kafka_bootstrap, unique_topic("paths"), "--allowed-roots", str(root)) as daemon,
        run_gateway(keys, f"127.0.0.1:{free_port()}", None, "--ingestor-addr", daemon.address) as gateway,
    ):
        yield Setup(gateway.address, root, outside, token)


async def import_texts(address: str, fmt: int, path: Path) -> tuple[grpc.StatusCode, list[str]]:
    """Every text the caller gets back: the status and its details, or each progress message's."""
    texts: list[str] = []
    async with insecure_channel(address) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        call = stub.ImportDataset(
            ingest_pb2.ImportDatasetRequest(format=fmt, path=str(path)),  # type: ignore[arg-type]
            metadata=bearer(INGEST_KEY),
            timeout=60,
        )
        try:
            async for progress in call:
                texts += [*progress.skip_reasons, *progress.class_names, str(progress)]
        except grpc.aio.AioRpcError as err:
            trailers = err.trailing_metadata() or ()
            texts += [err.details() or "", *(repr(value) for _, value in trailers)]
            return err.code(), texts
    return grpc.StatusCode.OK, texts


FORMATS = {
    "csv": ingest_pb2.DATASET_FORMAT_CSV,
    "coco": ingest_pb2.DATASET_FORMAT_COCO,
    "kitti": ingest_pb2.DATASET_FORMAT_KITTI,
    "yolo": ingest_pb2.DATASET_FORMAT_YOLO,
    "voc": ingest_pb2.DATASET_FORMAT_VOC,
}


@pytest.mark.parametrize(
    ("fmt", "rel"),
    [
        ("csv", "api-key"),
        ("coco", "api-key"),
        ("kitti", "api-key"),
        ("kitti", "kitti"),
        ("yolo", "yolo"),
        ("yolo", "yolo-yaml"),
        ("voc", "voc"),
    ],
)
async def test_no_message_quotes_the_file(setup: Setup, fmt: str, rel: str) -> None:
    code, texts = await import_texts(setup.gateway, FORMATS[fmt], setup.root / rel)
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), texts
    assert texts, "the import answered nothing"
    # Not the token, nor any 8 characters of it.
    leaked = [t for t in texts if any(setup.token[i : i + 8] in t for i in range(len(setup.token) - 7))]
    assert not leaked, leaked


async def test_the_csv_skip_reasons_give_rows_not_content(setup: Setup) -> None:
    code, texts = await import_texts(setup.gateway, FORMATS["csv"], setup.root / "api-key")
    assert code == grpc.StatusCode.OK
    assert any(t.startswith("row 1: image not found") for t in texts), texts


@pytest.mark.parametrize("rel", ["../run/api-key", "link/api-key", "key-link.csv"])
async def test_paths_leading_outside_the_roots_are_refused(setup: Setup, rel: str) -> None:
    code, texts = await import_texts(setup.gateway, FORMATS["csv"], setup.root / rel)
    assert code == grpc.StatusCode.PERMISSION_DENIED, texts
    assert "allowed roots" in texts[0] and "PATH_NOT_ALLOWED" in " ".join(texts)
    assert setup.token[:8] not in " ".join(texts)


async def test_a_path_outside_the_roots_is_refused(setup: Setup) -> None:
    code, texts = await import_texts(setup.gateway, FORMATS["csv"], setup.outside / "api-key")
    assert code == grpc.StatusCode.PERMISSION_DENIED and "--allowed-roots" in texts[0]


def test_without_roots_no_request_path_is_read(kafka_bootstrap: str, tmp_path: Path) -> None:
    secret = tmp_path / "api-key"
    secret.write_text("cm_never_shown\n")
    with (
        ingestor(kafka_bootstrap, unique_topic("no-roots")) as daemon,
        grpc.insecure_channel(daemon.address) as channel,
    ):
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        request = ingest_pb2.ImportDatasetRequest(format=ingest_pb2.DATASET_FORMAT_CSV, path=str(secret))
        with pytest.raises(grpc.RpcError) as err:
            list(stub.ImportDataset(request, timeout=30))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "--allowed-roots" in (err.value.details() or "") and "never_shown" not in (err.value.details() or "")
        folder = ingest_pb2.SourceSpec(kind=ingest_pb2.SOURCE_KIND_IMAGE_FOLDER, uri=str(tmp_path))
        with pytest.raises(grpc.RpcError) as err:
            stub.StartSource(ingest_pb2.StartSourceRequest(spec=folder), timeout=30)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
