"""The mesh CA and certificates that `make up` writes (kit/pki.py), and the settings that choose TLS."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from kit.config import BaseSettings, ConfigError, load_settings
from kit.pki import MeshPki, expires_within, issue


def test_ensure_creates_a_ca_and_one_certificate_per_identity_with_private_keys(tmp_path: Path) -> None:
    pki = MeshPki(tmp_path / "tls")
    pki.ensure(["gateway", "detector"])
    ca = x509.load_pem_x509_certificate(pki.ca.cert_file.read_bytes())
    for name in ("gateway", "detector"):
        leaf = x509.load_pem_x509_certificate(pki.leaf(name).cert_file.read_bytes())
        assert leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == name
        assert leaf.issuer == ca.subject
        leaf.verify_directly_issued_by(ca)
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "localhost" in sans.get_values_for_type(x509.DNSName)
        assert stat.S_IMODE(pki.leaf(name).key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.ca.key_file.stat().st_mode) == 0o600


def test_ensure_keeps_valid_certificates_and_renews_ending_ones(tmp_path: Path) -> None:
    pki = MeshPki(tmp_path)
    pki.ensure(["trainer", "ingestor"])
    kept = pki.leaf("trainer").cert_file.read_bytes()
    ending = pki.leaf("ingestor")
    issue(pki.ca, "ingestor", ending.cert_file, ending.key_file, validity_days=3)
    assert expires_within(ending.cert_file, 30)
    pki.ensure(["trainer", "ingestor"])
    assert pki.leaf("trainer").cert_file.read_bytes() == kept
    assert not expires_within(ending.cert_file, 30)


def test_mesh_args_name_the_three_files(tmp_path: Path) -> None:
    pki = MeshPki(tmp_path)
    args = pki.mesh_args("detector")
    assert args == [
        *("--mesh-ca-file", str(tmp_path / "ca.pem")),
        *("--mesh-cert-file", str(tmp_path / "detector.pem")),
        *("--mesh-key-file", str(tmp_path / "detector-key.pem")),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--mesh-plaintext for a local run"),
        (["--mesh-ca-file", "ca.pem"], "needs --mesh-cert-file, --mesh-key-file"),
        (["--mesh-plaintext", "--mesh-key-file", "k.pem"], "choose one"),
    ],
)
def test_a_daemon_never_falls_back_to_plaintext_silently(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(BaseSettings, "CARMESH_X_", argv, environ={})


def test_tls_or_plaintext_chosen_explicitly_load() -> None:
    files = ["--mesh-ca-file", "ca.pem", "--mesh-cert-file", "c.pem", "--mesh-key-file", "k.pem"]
    assert load_settings(BaseSettings, "CARMESH_X_", files, environ={}).mesh_cert_file == Path("c.pem")
    assert load_settings(BaseSettings, "CARMESH_X_", [], environ={"CARMESH_X_MESH_PLAINTEXT": "true"}).mesh_plaintext
