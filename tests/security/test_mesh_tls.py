"""Mutual TLS between daemons, and TLS on the gateway's public port, with real processes.

Each daemon here runs with certificates from a CA made for the test (kit/pki.py, as `make up`
does); callers without a certificate of that CA, or with one whose identity the daemon's caller
policy does not name, are refused (issue 16, hole 3).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status

from carmesh.v1 import detector_pb2, detector_pb2_grpc, registry_pb2, registry_pb2_grpc
from kit.mesh_tls import MeshTls, mesh_channel_sync
from kit.pki import MeshPki
from tests.gateway.test_detector_routing import jpeg, model_file
from tests.helpers import REPO_ROOT, DaemonProcess
from tests.registry.support import gateway_args as registry_args
from tests.status_details import details_of

IDENTITIES = ("gateway", "registry_gateway", "detector", "ingestor", "feature_service", "trainer", "operator")
ADMIN_KEY = "cm_mesh_tls_test_key_0123456789"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> MeshPki:
    mesh = MeshPki(tmp_path_factory.mktemp("tls"))
    mesh.ensure(IDENTITIES)
    return mesh


@pytest.fixture(scope="module")
def intruder(tmp_path_factory: pytest.TempPathFactory) -> MeshPki:
    """Another CA's certificate that claims to be the gateway."""
    other = MeshPki(tmp_path_factory.mktemp("other-tls"))
    other.ensure(["gateway"])
    return other


def identity(pki: MeshPki, name: str, ca_of: MeshPki | None = None) -> MeshTls:
    leaf = pki.leaf(name)
    ca = (ca_of or pki).ca.cert_file
    return MeshTls(ca.read_bytes(), leaf.cert_file.read_bytes(), leaf.key_file.read_bytes())


@pytest.fixture(scope="module")
def detector(pki: MeshPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    model = model_file(tmp_path_factory.mktemp("model"), "mesh-model")
    args = [*pki.mesh_args("detector"), "--model-path", str(model), "--max-wait-ms", "1"]
    # "port": the helper's own health probe has no certificate; the tests below ask with one.
    with DaemonProcess("detector", args, wait_for="port") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def gateway(pki: MeshPki, detector: DaemonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text(f"{ADMIN_KEY} admin *\n")
    public = MeshPki(pki.directory / "public")
    public.ensure(["gateway"])
    leaf = public.leaf("gateway")
    args = [
        *pki.mesh_args("gateway"),
        "--public-cert-file",
        str(leaf.cert_file),
        "--public-key-file",
        str(leaf.key_file),
    ]
    args += ["--detector-addrs", detector.address, "--registry-addr", "127.0.0.1:9", "--api-keys-file", str(keys)]
    with DaemonProcess("gateway", args, wait_for="port") as daemon:
        yield daemon


def detect_with(address: str, tls: MeshTls | None) -> detector_pb2.DetectResponse:
    with mesh_channel_sync(address, tls) as channel:
        stub = detector_pb2_grpc.DetectorServiceStub(channel)
        return stub.Detect(detector_pb2.DetectRequest(image=jpeg(), request_id="r"), timeout=20)


def test_the_designed_caller_gets_answers(pki: MeshPki, detector: DaemonProcess) -> None:
    reply = detect_with(detector.address, identity(pki, "gateway"))
    assert [d.class_name for d in reply.detections] == ["car", "truck"]


@pytest.mark.parametrize("who", ["plaintext", "no certificate", "another CA"])
def test_callers_without_a_mesh_certificate_cannot_connect(
    who: str, pki: MeshPki, intruder: MeshPki, detector: DaemonProcess
) -> None:
    if who == "plaintext":
        tls = None
    elif who == "no certificate":
        tls = None
        credentials = grpc.ssl_channel_credentials(pki.ca.cert_file.read_bytes())
        with grpc.secure_channel(detector.address, credentials) as channel, pytest.raises(grpc.RpcError) as failed:
            detector_pb2_grpc.DetectorServiceStub(channel).Detect(detector_pb2.DetectRequest(image=jpeg()), timeout=10)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        return
    else:
        tls = identity(intruder, "gateway", ca_of=pki)  # trusts our CA, presents the other CA's "gateway"
    with pytest.raises(grpc.RpcError) as failed:
        detect_with(detector.address, tls)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("name", ["ingestor", "trainer", "registry_gateway", "operator"])
def test_mesh_identities_the_policy_does_not_name_are_refused(name: str, pki: MeshPki, detector: DaemonProcess) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        detect_with(detector.address, identity(pki, name))
    assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    status = rpc_status.from_call(failed.value)  # type: ignore[arg-type]
    assert status is not None and details_of(status)["ErrorInfo"].reason == "MESH_CALLER_NOT_ALLOWED"
    assert name in (failed.value.details() or "")


def test_health_answers_any_mesh_identity(pki: MeshPki, detector: DaemonProcess) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with mesh_channel_sync(detector.address, identity(pki, "operator")) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def carmesh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CARMESH_")}
    # A run dir without a CA: the CLI must not pick the developer's own .run/tls here.
    clean["CARMESH_STACK_RUN_DIR"] = "/nonexistent-run-dir"
    argv = [sys.executable, "-m", "carmesh_cli", *args]
    return subprocess.run(
        argv, env={**clean, **(env or {})}, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_cli_reaches_the_gateway_over_tls_and_through_it_the_mesh(
    pki: MeshPki, gateway: DaemonProcess, tmp_path: Path
) -> None:
    image = tmp_path / "frame.jpg"
    image.write_bytes(jpeg())
    ca = str(pki.directory / "public" / "ca.pem")
    common = ["--gateway", gateway.address, "--api-key", ADMIN_KEY, "--timeout", "20"]
    done = carmesh("detect", str(image), "--json", "--ca", ca, *common)
    assert done.returncode == 0, done.stderr
    assert '"car"' in done.stdout
    by_env = carmesh("detect", str(image), "--json", *common, env={"CARMESH_CA": ca})
    assert by_env.returncode == 0, by_env.stderr


@pytest.mark.parametrize(
    ("flags", "why"),
    [
        (["--plaintext"], "plaintext to a TLS port"),
        ([], "the system's CAs do not know the gateway's"),
        (["--ca", "MESH_CA"], "the mesh CA does not sign the public certificate"),
    ],
)
def test_the_cli_refuses_a_gateway_it_cannot_verify(
    flags: list[str], why: str, pki: MeshPki, gateway: DaemonProcess, tmp_path: Path
) -> None:
    image = tmp_path / "frame.jpg"
    image.write_bytes(jpeg())
    flags = [str(pki.ca.cert_file) if flag == "MESH_CA" else flag for flag in flags]
    done = carmesh("detect", str(image), *flags, "--gateway", gateway.address, "--api-key", ADMIN_KEY, "--timeout", "3")
    assert done.returncode == 3, (why, done.stdout, done.stderr)
    assert "UNAVAILABLE" in done.stderr


def test_the_gateway_refuses_plaintext_without_the_explicit_flag(pki: MeshPki) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *pki.mesh_args("gateway"), "--grpc-port", "0", "--no-auth-required"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--public-cert-file" in done.stderr and "--public-plaintext" in done.stderr


def test_a_daemon_refuses_to_start_without_mesh_tls_or_the_explicit_flag() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ingestor", "--grpc-port", "0", "--metrics-port", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--mesh-ca-file" in done.stderr and "--mesh-plaintext" in done.stderr


@pytest.fixture(scope="module")
def registry(pki: MeshPki, mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    args = [*pki.mesh_args("registry_gateway"), *registry_args(mlflow_uri, tmp_path_factory.mktemp("cache"))]
    with DaemonProcess("registry_gateway", args, wait_for="port", timeout_s=90) as daemon:
        yield daemon


def set_alias(address: str, tls: MeshTls | None) -> None:
    with mesh_channel_sync(address, tls) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        stub.SetAlias(registry_pb2.SetAliasRequest(name="no-such-model", alias="champion", version="1"), timeout=20)


@pytest.mark.integration
def test_registry_writes_only_from_the_gateway_and_the_trainer(pki: MeshPki, registry: DaemonProcess) -> None:
    """The issue's example: SetAlias straight to the registry's port with no key used to succeed."""
    with pytest.raises(grpc.RpcError) as anonymous:
        set_alias(registry.address, None)
    assert anonymous.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as reader:
        set_alias(registry.address, identity(pki, "detector"))
    assert reader.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for writer in ("gateway", "trainer"):
        with pytest.raises(grpc.RpcError) as allowed:
            set_alias(registry.address, identity(pki, writer))
        # Past the caller check: the registry itself answers (the model does not exist).
        assert allowed.value.code() == grpc.StatusCode.NOT_FOUND, (writer, allowed.value.details())
    with mesh_channel_sync(registry.address, identity(pki, "detector")) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        stub.ListModels(registry_pb2.ListModelsRequest(), timeout=20)  # reads stay open to the detector


@pytest.mark.integration
def test_only_the_gateway_may_name_an_api_key_caller(pki: MeshPki, registry: DaemonProcess) -> None:
    """The caller entries carry an API key's name and scopes; a trainer sending them would borrow rights."""
    forged = (("x-carmesh-caller", "someone"), ("x-carmesh-caller-scopes", "*"))
    for name, code in (("trainer", grpc.StatusCode.PERMISSION_DENIED), ("gateway", grpc.StatusCode.OK)):
        with mesh_channel_sync(registry.address, identity(pki, name)) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            try:
                stub.ListModels(registry_pb2.ListModelsRequest(), metadata=forged, timeout=20)
                got = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                got = exc.code()
        assert got == code, name
