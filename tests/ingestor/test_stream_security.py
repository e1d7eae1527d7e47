"""Issue 16, holes 5 and 7 at the ingestor: stream hosts outside the allow-list (and redirects to
them) are refused, stream credentials never show in responses, frames or logs, and names that
would collide in Redis (``cam1:cars``) are refused where requests come in."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from google.rpc import status_pb2

from carmesh.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc
from kit.clients import insecure_channel
from tests.helpers import DaemonProcess, free_port
from tests.ingestor.mjpeg import MjpegCamera
from tests.ingestor.support import ingestor, jpeg, read_topic, unique_topic
from tests.status_details import details_of, fields_of

pytestmark = pytest.mark.e2e

PASSWORD = "s3cret-Pw"
Daemon = tuple[DaemonProcess, str, str]


def frames(count: int) -> list[np.ndarray]:
    return [np.full((360, 640, 3), 40 + 30 * i, np.uint8) for i in range(count)]


def status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    [trailer] = [v for k, v in error.trailing_metadata() or () if k == "grpc-status-details-bin"]
    assert isinstance(trailer, bytes)
    return status_pb2.Status.FromString(trailer)


def reason_of(status: status_pb2.Status) -> str:
    return str(details_of(status)["ErrorInfo"].reason)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ingest-security")
    cv2.imwrite(str(root / "a.jpg"), frames(1)[0])
    return root


@pytest.fixture(scope="module")
def daemon(kafka_bootstrap: str, data_root: Path) -> Iterator[Daemon]:
    topic = unique_topic("security")
    # Only 127.0.0.1 is a stream host here: 127.0.0.2 stands for a cluster address not allowed.
    args = ["--allowed-roots", str(data_root), "--stream-allowed-hosts", "127.0.0.1"]
    with ingestor(kafka_bootstrap, topic, *args) as proc:
        yield proc, topic, kafka_bootstrap


@pytest.fixture
async def stub(daemon: Daemon) -> AsyncIterator[ingest_pb2_grpc.IngestServiceStub]:
    async with insecure_channel(daemon[0].address) as channel:
        yield ingest_pb2_grpc.IngestServiceStub(channel)


async def start_error(stub: ingest_pb2_grpc.IngestServiceStub, spec: ingest_pb2.SourceSpec) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.StartSource(ingest_pb2.StartSourceRequest(spec=spec), timeout=15)
    return err.value


def stream(url: str, camera_id: str = "") -> ingest_pb2.SourceSpec:
    return ingest_pb2.SourceSpec(kind=ingest_pb2.SOURCE_KIND_STREAM, uri=url, camera_id=camera_id)


class Redirect:
    """An HTTP server on 127.0.0.1 that answers every GET with a 302 to ``location``."""

    def __init__(self, location: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/camera.mjpg"

    def __enter__(self) -> Redirect:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


async def test_stream_hosts_outside_the_allow_list_are_refused(stub: ingest_pb2_grpc.IngestServiceStub) -> None:
    with MjpegCamera(frames(3), fps=10, host="127.0.0.2") as elsewhere:
        refused = [
            elsewhere.url,  # a live camera, but not on an allowed host
            "http://169.254.169.254/latest/meta-data/",  # the cloud metadata service
            "http://[fe80::1]:8080/x",
            "http://[::ffff:169.254.169.254]/latest/meta-data/",
        ]
        for url in refused:
            err = await start_error(stub, stream(url))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (url, err.details())
            assert reason_of(status_of(err)) == "STREAM_HOST_NOT_ALLOWED" and fields_of(status_of(err)) == ["spec.uri"]
        listed = await stub.ListSources(ingest_pb2.ListSourcesRequest(), timeout=10)
        assert not [s for s in listed.sources if "127.0.0.2" in s.spec.uri]


async def test_a_redirect_to_a_host_not_allowed_is_not_followed(stub: ingest_pb2_grpc.IngestServiceStub) -> None:
    with MjpegCamera(frames(3), fps=10, host="127.0.0.2") as elsewhere, Redirect(elsewhere.url) as hop:
        err = await start_error(stub, stream(hop.url))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "cannot open stream" in (err.details() or "")


async def test_stream_credentials_are_redacted_everywhere(
    daemon: Daemon, stub: ingest_pb2_grpc.IngestServiceStub
) -> None:
    proc, topic, bootstrap = daemon
    camera_id = "cam-secret"
    with MjpegCamera(frames(4), fps=20) as camera:
        url = camera.url.replace("http://", f"http://viewer:{PASSWORD}@")
        started = await stub.StartSource(ingest_pb2.StartSourceRequest(spec=stream(url, camera_id)), timeout=15)
        source_id = started.source.source_id
        assert started.source.spec.uri == camera.url.replace("http://", "http://viewer:***@")
        published = await read_topic(
            bootstrap, topic, lambda f: f.camera_id == camera_id, done=lambda kept: len(kept) >= 2
        )
        listed = await stub.ListSources(ingest_pb2.ListSourcesRequest(), timeout=10)
        await stub.StopSource(ingest_pb2.StopSourceRequest(source_id=source_id), timeout=10)
    # A URL that cannot be opened: the error quotes it, without the password.
    err = await start_error(stub, stream(f"rtsp://viewer:{PASSWORD}@127.0.0.1:{free_port()}/cam"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "viewer:***@" in (err.details() or "")
    texts = [
        str(started),
        str(listed),
        *(f.source for f in published),
        err.details() or "",
        str(status_of(err)),
        proc.log(),
    ]
    assert all(PASSWORD not in text for text in texts)
    assert all(f.source.startswith("http://viewer:***@127.0.0.1:") for f in published)
    assert "viewer:***@" in proc.log()


async def test_names_that_would_collide_in_redis_are_refused(
    daemon: Daemon, stub: ingest_pb2_grpc.IngestServiceStub, data_root: Path
) -> None:
    folder = ingest_pb2.SourceSpec(kind=ingest_pb2.SOURCE_KIND_IMAGE_FOLDER, uri=str(data_root), camera_id="cam1:cars")
    err = await start_error(stub, folder)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(status_of(err)) == "INVALID_NAME" and fields_of(status_of(err)) == ["spec.camera_id"]

    for field, value in (("dataset", "apollo:2"), ("camera_id", "cam1:cars"), ("dataset", "a b")):
        request = ingest_pb2.ImportDatasetRequest(format=ingest_pb2.DATASET_FORMAT_YOLO, path=str(data_root))
        setattr(request, field, value)
        with pytest.raises(grpc.aio.AioRpcError) as import_err:
            async for _ in stub.ImportDataset(request, timeout=15):
                pass
        assert import_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, value)
        assert fields_of(status_of(import_err.value)) == [field]

    with pytest.raises(grpc.aio.AioRpcError) as stop_err:
        await stub.StopSource(ingest_pb2.StopSourceRequest(source_id="src-1:x"), timeout=10)
    assert stop_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def requests() -> AsyncIterator[ingest_pb2.IngestFramesRequest]:
        image = jpeg(frames(1)[0])
        source = f"rtsp://viewer:{PASSWORD}@cam.example/live"  # a client's own source: redacted too
        for camera_id in ("cam1:cars", "cam-ok"):
            yield ingest_pb2.IngestFramesRequest(
                frame=common_pb2.Frame(camera_id=camera_id, image=image, source=source)
            )

    reply = await stub.IngestFrames(requests(), timeout=30)
    assert (reply.accepted, reply.rejected) == (1, 1)
    [rejection] = reply.rejections
    assert reason_of(rejection) == "INVALID_NAME" and fields_of(rejection) == ["frame.camera_id"]
    _, topic, bootstrap = daemon
    [published] = await read_topic(
        bootstrap, topic, lambda f: f.camera_id == "cam-ok", done=lambda kept: len(kept) >= 1
    )
    assert published.source == "rtsp://viewer:***@cam.example/live"
