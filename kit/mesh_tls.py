"""Mutual TLS between daemons: who a peer is, and which peers may call which methods.

Every daemon holds a certificate signed by the mesh CA (``--mesh-ca-file``, ``--mesh-cert-file``,
``--mesh-key-file``); its common name is its identity (``gateway``, ``trainer``, ...). A daemon's
server accepts only clients with such a certificate, and its :class:`CallerPolicy` names the
identities that may call each method; the daemon's own client calls present its certificate.
``--mesh-plaintext`` turns all of it off, for local runs and tests only, and must be asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc

from kit.callers import CALLER_HEADER, CALLER_SCOPES_HEADER
from kit.errors import PermissionDenied, Unauthenticated

# Identities of the mesh's daemons, as their certificates' common names.
GATEWAY = "gateway"
REGISTRY = "registry_gateway"
DETECTOR = "detector"
INGESTOR = "ingestor"
FEATURE_SERVICE = "feature_service"
TRAINER = "trainer"
TRACKER = "tracker"
# Local tooling (``make up``'s health checks, the benchmarks): health and reflection only.
OPERATOR = "operator"
DAEMON_IDENTITIES = (GATEWAY, REGISTRY, DETECTOR, INGESTOR, FEATURE_SERVICE, TRAINER, TRACKER)

# Methods any holder of a mesh certificate may call: liveness, readiness and reflection.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/")


class MeshSettings(Protocol):
    mesh_ca_file: Path | None
    mesh_cert_file: Path | None
    mesh_key_file: Path | None
    mesh_plaintext: bool


@dataclass(frozen=True)
class MeshTls:
    """The PEM bytes of one daemon's mesh identity, read once at start-up."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)], self.ca_pem, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca_pem, self.key_pem, self.cert_pem)


def check_mesh_settings(cfg: MeshSettings) -> None:
    """Either all three files, or ``mesh_plaintext``: a daemon never falls back to plaintext silently."""
    files = {
        "mesh_ca_file": cfg.mesh_ca_file,
        "mesh_cert_file": cfg.mesh_cert_file,
        "mesh_key_file": cfg.mesh_key_file,
    }
    given = [name for name, path in files.items() if path is not None]
    if cfg.mesh_plaintext and given:
        raise ValueError(f"mesh_plaintext is set together with {', '.join(given)}: choose one")
    if not cfg.mesh_plaintext and len(given) != len(files):
        missing = [f"--{name.replace('_', '-')}" for name in files if files[name] is None]
        raise ValueError(
            f"mutual TLS between daemons needs {', '.join(missing)} (files of the mesh CA and this daemon's "
            "certificate; `make up` writes them to .run/tls/), or --mesh-plaintext for a local run without TLS"
        )


def load_mesh_tls(cfg: MeshSettings) -> MeshTls | None:
    """The daemon's mesh identity, or None under ``mesh_plaintext``. Raises OSError for unreadable files."""
    if cfg.mesh_plaintext:
        return None
    assert cfg.mesh_ca_file and cfg.mesh_cert_file and cfg.mesh_key_file  # check_mesh_settings ran
    return MeshTls(cfg.mesh_ca_file.read_bytes(), cfg.mesh_cert_file.read_bytes(), cfg.mesh_key_file.read_bytes())


def mesh_channel(target: str, tls: MeshTls | None, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """An asyncio channel to another daemon: mutual TLS with this daemon's certificate, or plaintext."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=list(options))


def mesh_channel_sync(target: str, tls: MeshTls | None, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """The blocking-API twin of :func:`mesh_channel` (worker processes, tooling)."""
    if tls is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, tls.channel_credentials(), options=list(options))


def peer_identity(context: grpc.aio.ServicerContext) -> str | None:
    """The common name of the peer's verified client certificate, or None on a plaintext connection."""
    auth = context.auth_context() or {}
    names: Iterable[bytes] = auth.get("x509_common_name") or ()
    for name in names:
        return name.decode("utf-8", "replace")
    return None


@dataclass(frozen=True)
class CallerPolicy:
    """Which mesh identities may call a daemon's methods: ``by_method`` (full method name, e.g.
    ``/carmesh.v1.RegistryService/SetAlias``) overrides ``default``. Only ``header_trusted``
    identities (the gateway) may name an API-key caller in the ``x-carmesh-caller`` entries."""

    default: frozenset[str]
    by_method: Mapping[str, frozenset[str]] = field(default_factory=dict)
    header_trusted: frozenset[str] = frozenset({GATEWAY})

    def allowed(self, method: str) -> frozenset[str]:
        return self.by_method.get(method, self.default)

    def authorize(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """Raises PermissionDenied (or Unauthenticated without a certificate) unless the peer may call ``method``."""
        identity = peer_identity(context)
        if identity is None:
            # The server requires client certificates, so this is a server misconfiguration, not a client's fault.
            raise Unauthenticated("this daemon requires a mesh client certificate", reason="MESH_CERT_REQUIRED")
        if method.startswith(OPEN_SERVICES):
            return
        allowed = self.allowed(method)
        if identity not in allowed:
            raise PermissionDenied(
                f"mesh identity {identity!r} may not call {method}; allowed: {', '.join(sorted(allowed))}",
                reason="MESH_CALLER_NOT_ALLOWED",
            )
        if identity not in self.header_trusted:
            keys = {key.lower() for key, _ in context.invocation_metadata() or ()}
            if keys & {CALLER_HEADER, CALLER_SCOPES_HEADER}:
                raise PermissionDenied(
                    f"only the gateway may name the API-key caller ({CALLER_HEADER}); {identity!r} sent it",
                    reason="MESH_CALLER_HEADER_FORBIDDEN",
                )


def methods(service: str, names: Iterable[str]) -> list[str]:
    """Full method names of ``service`` (``carmesh.v1.RegistryService``) for a policy's ``by_method``."""
    return [f"/{service}/{name}" for name in names]
