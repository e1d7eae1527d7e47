"""kit.probe, helm/carmesh's readiness probe: SERVING or not, plaintext or with the daemon's mesh certificate."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from carmesh.v1 import detector_pb2_grpc
from kit.probe import credentials, main, probe
from tests.helpers import free_port
from tests.kit.support import detector_server

PREFIX = "CARMESH_DETECTOR_"


async def test_serving_not_serving_and_nothing_listening() -> None:
    async with detector_server(detector_pb2_grpc.DetectorServiceServicer()) as server:
        await server.set_serving(True)
        assert await asyncio.to_thread(probe, server.port, None, "", 3.0)
        await server.set_serving(False)
        assert not await asyncio.to_thread(probe, server.port, None, "", 3.0)
    assert not await asyncio.to_thread(probe, free_port(), None, "", 1.0)


def _cert(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _mesh_files(tmp: Path) -> dict[str, str]:
    """A CA and a detector certificate for localhost, as the chart's Secret holds them."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mesh-ca")])
    ca = _cert("mesh-ca", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("detector", key, ca_name, ca_key, ca=False)
    (tmp / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "tls.key").write_bytes(_pem(key))
    return {
        f"{PREFIX}MESH_{n}_FILE": str(tmp / f) for n, f in (("CA", "ca.crt"), ("CERT", "tls.crt"), ("KEY", "tls.key"))
    }


async def test_mutual_tls_with_the_daemons_own_certificate(tmp_path: Path) -> None:
    env = _mesh_files(tmp_path)
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials(
        [((tmp_path / "tls.key").read_bytes(), (tmp_path / "tls.crt").read_bytes())],
        (tmp_path / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await asyncio.to_thread(probe, port, credentials(PREFIX, env), "", 3.0)
        # Without a client certificate the server refuses the handshake: plaintext is not a fallback.
        assert not await asyncio.to_thread(probe, port, None, "", 3.0)
    finally:
        await server.stop(0)


def test_half_the_mesh_files_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = _mesh_files(tmp_path)
    del env[f"{PREFIX}MESH_KEY_FILE"]
    with pytest.raises(ValueError, match="set together"):
        credentials(PREFIX, env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["--port", str(free_port()), "--env-prefix", PREFIX]) == 1
