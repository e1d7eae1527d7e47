"""A small certificate authority for the mesh: one CA, one certificate per daemon (its identity is
the certificate's common name), a server certificate for the gateway's public port.

``make up`` uses it to create ``.run/tls/``; in a cluster, cert-manager or the chart issues the
same shapes. Keys are EC P-256 (small, fast handshakes), written 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY_DAYS = 3650
LEAF_VALIDITY_DAYS = 397  # what browsers and most policies accept as the longest leaf lifetime


@dataclass(frozen=True)
class Issued:
    cert_file: Path
    key_file: Path


def _write_private(path: Path, data: bytes) -> None:
    """Writes ``data`` readable by its owner only, from the first byte (no window with wider modes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def create_ca(cert_file: Path, key_file: Path, common_name: str = "carmesh mesh CA") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_file, _key_pem(key))
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_file, key_file)


def issue(
    ca: Issued,
    common_name: str,
    cert_file: Path,
    key_file: Path,
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    validity_days: int = LEAF_VALIDITY_DAYS,
) -> Issued:
    """A leaf certificate for ``common_name`` usable as both TLS server and client (a daemon is both),
    valid for the names a client dials."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_file.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key_file.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca.key_file} is not an EC private key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(key_file, _key_pem(key))
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_file, key_file)


def expires_within(cert_file: Path, days: float) -> bool:
    """Whether the certificate ends within ``days`` (``make up`` re-issues such certificates)."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=days)


@dataclass(frozen=True)
class MeshPki:
    """The files of one mesh: ``DIR/ca.pem``, ``DIR/<identity>.pem`` and ``DIR/<identity>-key.pem``."""

    directory: Path

    @property
    def ca(self) -> Issued:
        return Issued(self.directory / "ca.pem", self.directory / "ca-key.pem")

    def leaf(self, identity: str) -> Issued:
        return Issued(self.directory / f"{identity}.pem", self.directory / f"{identity}-key.pem")

    def ensure(self, identities: Sequence[str], renew_within_days: float = 30.0) -> None:
        """Creates the CA if missing and a certificate per identity if missing or ending soon.
        Idempotent: a second ``make up`` keeps what is valid (daemons already running trust it)."""
        if not self.ca.cert_file.exists() or not self.ca.key_file.exists():
            create_ca(self.ca.cert_file, self.ca.key_file)
        for identity in identities:
            leaf = self.leaf(identity)
            if (
                leaf.cert_file.exists()
                and leaf.key_file.exists()
                and not expires_within(leaf.cert_file, renew_within_days)
            ):
                continue
            issue(self.ca, identity, leaf.cert_file, leaf.key_file)

    def mesh_args(self, identity: str) -> list[str]:
        """The flags a daemon takes to be ``identity`` on the mesh."""
        leaf = self.leaf(identity)
        return [
            *("--mesh-ca-file", str(self.ca.cert_file)),
            *("--mesh-cert-file", str(leaf.cert_file)),
            *("--mesh-key-file", str(leaf.key_file)),
        ]
