"""End to end, as a user runs it: `make up`, the `carmesh` CLI through the gateway,
promotion with hot reload under load, rollback, a registry outage, `make down`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image

from carmesh.v1 import detector_pb2, detector_pb2_grpc
from devstack.procs import Process
from devstack.services import Ports, StackConfig, free_port_offset, grpc_serving
from kit.mesh_tls import MeshTls
from tests.helpers import REPO_ROOT
from tests.support import eventually, eventually_async

pytestmark = pytest.mark.e2e


@dataclass
class Mesh:
    env: dict[str, str]
    ports: Ports
    run_dir: Path
    api_key: str

    @property
    def gateway(self) -> str:
        return f"127.0.0.1:{self.ports.gateway}"

    def stack(self) -> StackConfig:
        return StackConfig(run_dir=self.run_dir, ports=self.ports)

    def operator_tls(self) -> MeshTls | None:
        """`make up`'s own mesh identity: health checks of the daemons behind the gateway."""
        return self.stack().operator_tls()

    def public_credentials(self) -> grpc.ChannelCredentials:
        """TLS to the gateway, trusting the CA `make up` signed its certificate with."""
        return grpc.ssl_channel_credentials(self.stack().public_pki.ca.cert_file.read_bytes())

    def cli(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "carmesh_cli", *args],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def make(self, target: str) -> subprocess.CompletedProcess[str]:
        # --no-print-directory: under `make test`, make's own "Entering directory" lines would reach stdout.
        argv = ["make", "--no-print-directory", target, f"VENV={Path(sys.executable).parent.parent}"]
        return subprocess.run(
            argv, env=self.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False
        )


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    run_dir = Path(tempfile.mkdtemp(prefix="carmesh-e2e-"))
    os.chmod(run_dir, 0o755)
    offset = free_port_offset(range(11000, 14400, 97))
    env = {**os.environ, "CARMESH_STACK_RUN_DIR": str(run_dir), "CARMESH_STACK_PORT_OFFSET": str(offset)}
    ports = Ports().shifted(offset)
    mesh = Mesh(env=env, ports=ports, run_dir=run_dir, api_key="")
    up = mesh.make("up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        # Status lines go to stderr, so a script's captured stdout holds only results (issue 14's demo bug).
        assert up.stdout == "", f"`make up` wrote to stdout: {up.stdout!r}"
        mesh.api_key = (run_dir / "api-key").read_text().strip()
        env["CARMESH_API_KEY"] = mesh.api_key
        env["CARMESH_GATEWAY"] = mesh.gateway
        yield mesh
    finally:
        running = [int(p.read_text()) for p in (run_dir / "pids").glob("*.pid")]
        down = mesh.make("down")
        pids = list((run_dir / "pids").glob("*.pid"))
        orphans = [
            pid
            for pid in running
            if Path(f"/proc/{pid}").exists()
            and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        ]
        shutil.rmtree(run_dir, ignore_errors=True)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not pids, f"make down left pid files: {pids}"
        assert not orphans, f"make down left processes running: {orphans}"


def _kitti_cars(label_path: Path, min_height_px: float) -> list[tuple[float, float, float, float]]:
    boxes = []
    for line in label_path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0].lower() == "car":
            x1, y1, x2, y2 = map(float, parts[4:8])
            if y2 - y1 >= min_height_px:
                boxes.append((x1, y1, x2, y2))
    return boxes


def _iou(a: list[float] | tuple[float, ...], b: list[float] | tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_mesh_detects_promotes_reloads_and_rolls_back(mesh: Mesh, shared_dir: Path, tmp_path: Path) -> None:
    model = shared_dir / "models" / "yolox_nano.onnx"
    # The second import lets the registry tell the family from the layout.
    for family in ("yolox", "auto"):
        imported = mesh.cli(
            "models",
            "import",
            str(model),
            "--name",
            "car-detector",
            "--family",
            family,
            "--names",
            "coco",
            "--description",
            f"family {family}",
        )
        assert imported.returncode == 0, imported.stderr
    promoted = mesh.cli("models", "promote", "car-detector", "1", "--alias", "champion")
    assert promoted.returncode == 0, promoted.stderr
    eventually(
        lambda: grpc_serving(f"127.0.0.1:{mesh.ports.detector}", mesh.operator_tls()),
        what="the detector to serve the promoted champion",
        timeout_s=120,
        interval_s=0.2,
    )

    listed = mesh.cli("models", "versions", "car-detector", "--json")
    assert listed.returncode == 0, listed.stderr
    versions = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    assert {str(v["version"]) for v in versions} >= {"1", "2"}

    # Detection through the gateway with the CLI: cars found where the labels say, annotated JPEG written.
    images = sorted((shared_dir / "data" / "apollo-cars" / "val" / "images").glob("*.jpg"))[:3]
    out_dir = tmp_path / "annotated"
    detected = mesh.cli("detect", *map(str, images), "--json", "--classes", "car", "--out", str(out_dir))
    assert detected.returncode == 0, detected.stderr
    records = [json.loads(line) for line in detected.stdout.splitlines() if line.strip()]
    assert len(records) == len(images)
    matched = total = 0
    for image, record in zip(images, records, strict=True):
        assert record["model"]["version"] == "1"
        assert all(d["class_name"] == "car" for d in record["detections"])
        label = image.parent.parent / "labels" / (image.stem + ".txt")
        for truth in _kitti_cars(label, min_height_px=60):
            total += 1
            matched += any(_iou(truth, d["box"]) >= 0.5 for d in record["detections"])
        with Image.open(record["annotated"]) as annotated, Image.open(image) as original:
            assert annotated.size == original.size
    assert total > 0 and matched / total >= 0.5, f"found {matched} of {total} large labelled cars"

    # Promotion hot-reloads the detector while clients keep sending: zero failed requests.
    asyncio.run(_promote_under_load(mesh, images[0].read_bytes()))

    rolled = mesh.cli("models", "rollback", "car-detector", "--alias", "champion")
    assert rolled.returncode == 0, rolled.stderr
    asyncio.run(_wait_for_version(mesh, images[0].read_bytes(), "1"))


async def _detect(stub: detector_pb2_grpc.DetectorServiceStub, image: bytes, key: str) -> detector_pb2.DetectResponse:
    return await stub.Detect(
        detector_pb2.DetectRequest(image=image), timeout=30, metadata=(("authorization", f"Bearer {key}"),)
    )


async def _promote_under_load(mesh: Mesh, image: bytes) -> None:
    versions_seen: list[str] = []
    failures: list[str] = []
    stop = asyncio.Event()
    async with grpc.aio.secure_channel(mesh.gateway, mesh.public_credentials()) as channel:
        stub = detector_pb2_grpc.DetectorServiceStub(channel)

        async def client() -> None:
            while not stop.is_set():
                try:
                    versions_seen.append((await _detect(stub, image, mesh.api_key)).model.version)
                except grpc.aio.AioRpcError as err:
                    failures.append(f"{err.code().name}: {err.details()}")

        clients = [asyncio.create_task(client()) for _ in range(6)]
        await eventually_async(lambda: len(versions_seen) >= 12, what="12 replies before the promotion", timeout_s=60)
        # Imported YOLOX versions carry no evaluation for the gate to compare: --force.
        promoted = await asyncio.to_thread(mesh.cli, "models", "promote", "car-detector", "2", "--force")
        assert promoted.returncode == 0, promoted.stderr
        await eventually_async(lambda: "2" in versions_seen[-6:], what="replies from version 2", timeout_s=90)
        reloaded_at = len(versions_seen)
        await eventually_async(
            lambda: len(versions_seen) >= reloaded_at + 30, what="30 more replies after the reload", timeout_s=60
        )
        stop.set()
        await asyncio.gather(*clients)
    assert not failures, failures[:5]
    assert versions_seen[0] == "1" and versions_seen[-1] == "2"


async def _wait_for_version(mesh: Mesh, image: bytes, version: str) -> None:
    async with grpc.aio.secure_channel(mesh.gateway, mesh.public_credentials()) as channel:
        stub = detector_pb2_grpc.DetectorServiceStub(channel)

        async def on_version() -> bool:
            return (await _detect(stub, image, mesh.api_key)).model.version == version

        await eventually_async(on_version, what=f"the gateway to answer with version {version}", timeout_s=90)


def test_pipeline_through_make_up(mesh: Mesh, shared_dir: Path) -> None:
    """`make up` wires the pipeline: a data set imported through the gateway is stored, the
    detector's streaming mode answers every frame, and the camera's features name the model."""
    camera = f"e2e-{os.getpid()}"
    imported = mesh.cli(
        "ingest",
        "dataset",
        str(shared_dir / "data" / "apollo-cars"),
        "--format",
        "kitti",
        "--dataset",
        camera,
        "--camera",
        camera,
    )
    assert imported.returncode == 0, imported.stderr
    assert "148 of 148 frames" in imported.stdout, imported.stdout

    def features_with_a_model() -> dict:
        shown = mesh.cli("features", camera, "--json")
        assert shown.returncode == 0, shown.stderr
        record = json.loads(shown.stdout)
        assert record.get("last_model", {}).get("version") and record.get("features"), record
        return record

    record = eventually(features_with_a_model, what=f"features with a model for {camera}", timeout_s=180)
    assert record["last_model"]["name"] == "car-detector"
    # `make up`'s PostgreSQL asks for the password it made (docs/security.md, section 3).
    password = (mesh.run_dir / "secrets" / "postgres-password").read_text().strip()
    dsn = f"postgresql://postgres:{password}@127.0.0.1:{mesh.ports.postgres}/carmesh"
    count_sql = "select count(*) from frames where camera_id = $1"
    eventually(
        lambda: asyncio.run(_fetchval(dsn, count_sql, camera)) == 148,
        what="feature_service to store all 148 frames",
        timeout_s=180,
    )
    created = mesh.cli("datasets", "create", camera, "--dataset", camera, "--keep-source-split", "--json")
    assert created.returncode == 0, created.stderr
    snapshot = json.loads(created.stdout)
    assert (int(snapshot["train_frames"]), int(snapshot["val_frames"])) == (98, 50)


def test_snapshot_train_register_promote_serve(mesh: Mesh, shared_dir: Path) -> None:
    """The full loop through `make up` and the CLI: the snapshot the pipeline test made is
    trained on (tiny sizes, one epoch), the version is registered as challenger, the gate runs,
    and the detector serves the new version."""
    snapshot = f"e2e-{os.getpid()}"
    trained = mesh.cli(
        "train",
        snapshot,
        "--classes",
        "car",
        "--ignore-classes",
        "van,truck,bus",
        "--size",
        "320x192",
        "--crop",
        "64x64",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--json",
        timeout_s=900,
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    job = json.loads(trained.stdout)
    assert job["state"] == "TRAINING_STATE_SUCCEEDED" and job["dataset"] == f"{snapshot}:1"
    version = job["registered"]["version"]
    assert job["registered"] == {"name": "car-detector", "version": version, "alias": "challenger"}
    assert "epoch 0:" in trained.stderr  # progress was shown

    # The champion (an imported YOLOX) cannot be scored by the trainer: the gate refuses to guess.
    gated = mesh.cli("models", "promote", "car-detector", version, timeout_s=900)
    assert gated.returncode == 1 and "gate: cannot compare" in gated.stderr, gated.stdout + gated.stderr
    forced = mesh.cli("models", "promote", "car-detector", version, "--force")
    assert forced.returncode == 0, forced.stderr
    image = sorted((shared_dir / "data" / "apollo-cars" / "val" / "images").glob("*.jpg"))[0]
    asyncio.run(_wait_for_version(mesh, image.read_bytes(), version))
    detected = mesh.cli("detect", str(image), "--json")
    assert detected.returncode == 0, detected.stderr
    assert json.loads(detected.stdout)["model"]["version"] == version


async def _fetchval(dsn: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def test_detector_keeps_serving_when_registry_is_down(mesh: Mesh, shared_dir: Path) -> None:
    image = sorted((shared_dir / "data" / "apollo-cars" / "val" / "images").glob("*.jpg"))[0]
    registry = Process("registry_gateway", [], mesh.run_dir, ready=lambda: True)
    assert registry.stop(), "registry_gateway was not running"
    try:
        detected = mesh.cli("detect", str(image), "--json")
        assert detected.returncode == 0, detected.stderr
        assert grpc_serving(f"127.0.0.1:{mesh.ports.detector}", mesh.operator_tls())
        listed = mesh.cli("models", "list")
        assert listed.returncode == 1 and "UNAVAILABLE" in listed.stderr, listed.stderr
    finally:
        restarted = mesh.make("up")
        assert restarted.returncode == 0, restarted.stderr


def test_cli_reports_auth_failures(mesh: Mesh, shared_dir: Path) -> None:
    image = sorted((shared_dir / "data" / "apollo-cars" / "val" / "images").glob("*.jpg"))[0]
    wrong = mesh.cli("detect", str(image), "--api-key", "not-a-key")
    assert wrong.returncode == 4 and "UNAUTHENTICATED" in wrong.stderr, wrong.stderr


def test_reflection_lists_every_service_through_the_gateway(mesh: Mesh) -> None:
    """README: `grpcurl -plaintext 127.0.0.1:50051 list` works through the `make up` gateway (no key needed)."""
    routed = (
        "DetectorService",
        "RegistryService",
        "IngestService",
        "FeatureService",
        "TrainingService",
        "TrackingService",
    )
    wanted = {f"carmesh.v1.{name}" for name in routed} | {"grpc.health.v1.Health"}
    with grpc.secure_channel(mesh.gateway, mesh.public_credentials()) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert wanted <= set(database.get_services())
        described = database.FindFileContainingSymbol("carmesh.v1.TrainingService")
    assert described.name == "carmesh/v1/training.proto"
    assert "StartTraining" in [m.name for m in described.service[0].method]
    grpcurl = shutil.which("grpcurl")
    if grpcurl:
        listed = subprocess.run(
            [grpcurl, "-plaintext", mesh.gateway, "list"], capture_output=True, text=True, timeout=60, check=False
        )
        assert listed.returncode == 0, listed.stderr
        assert wanted <= set(listed.stdout.split()), listed.stdout
