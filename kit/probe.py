"""``python -m kit.probe --port P --env-prefix CARMESH_<DAEMON>_``: exit 0 when the daemon on this host
says SERVING over grpc.health.v1, 1 otherwise; helm/carmesh's readiness probe.

The kubelet's own gRPC probe cannot present a client certificate, and under mesh TLS every port
requires one: this probe uses the daemon's own mesh files, named by the daemon's environment
(``<prefix>MESH_CA_FILE``, ``<prefix>MESH_CERT_FILE``, ``<prefix>MESH_KEY_FILE``), and plaintext without them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The name the daemon's certificate carries for connections from its own pod.
_LOCAL_NAME = "localhost"


def credentials(prefix: str, environ: Mapping[str, str]) -> grpc.ChannelCredentials | None:
    """The daemon's mesh credentials, or None when its environment names no mesh files."""
    files = [environ.get(f"{prefix}MESH_{name}_FILE", "") for name in ("CA", "CERT", "KEY")]
    if not any(files):
        return None
    if not all(files):
        raise ValueError(f"{prefix}MESH_CA_FILE, _CERT_FILE and _KEY_FILE must be set together")
    ca, cert, key = (Path(f).read_bytes() for f in files)
    return grpc.ssl_channel_credentials(ca, key, cert)


def probe(port: int, creds: grpc.ChannelCredentials | None, service: str, timeout_s: float) -> bool:
    target = f"{_LOCAL_NAME}:{port}"
    channel = grpc.secure_channel(target, creds) if creds is not None else grpc.insecure_channel(target)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kit.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="the daemon's gRPC port")
    parser.add_argument("--env-prefix", required=True, help="the daemon's CARMESH_<DAEMON>_ prefix")
    parser.add_argument("--service", default="", help="health service name (empty: the whole server)")
    parser.add_argument("--timeout-s", type=float, default=3.0)
    args = parser.parse_args(argv)
    try:
        creds = credentials(args.env_prefix, os.environ)
    except (OSError, ValueError) as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return 1
    serving = probe(args.port, creds, args.service, args.timeout_s)
    if not serving:
        print(f"probe: {_LOCAL_NAME}:{args.port} is not SERVING", file=sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
