"""The CLI's one gRPC channel to the gateway (or a daemon), its credentials, and exit codes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc

from carmesh_cli.rpc_errors import RpcDetails, rpc_details

# Exit codes, also listed in ``carmesh --help``.
EXIT_OK = 0
EXIT_RPC_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4

DEFAULT_GATEWAY = "127.0.0.1:50051"
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


class CliError(Exception):
    """Ends the command with ``message`` on stderr and ``exit_code``; ``details`` are those of the failed call."""

    def __init__(self, message: str, exit_code: int, details: RpcDetails | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.details = details


def rpc_failure(error: grpc.RpcError, context: str = "") -> CliError:
    """``error: STATUS: details`` with the exit code the status calls for, then the status's rich
    details (reason, field violations, "retry after N s"), one indented line each."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    message = f"{code.name}: {details}" + (f" ({context})" if context else "")
    rich = rpc_details(error)
    if rich is not None:
        message += "".join(f"\n  {line}" for line in rich.lines(details or ""))
    if code == grpc.StatusCode.UNAUTHENTICATED:
        message += "\nhint: pass an API key with --api-key or the CARMESH_API_KEY environment variable"
    return CliError(message, EXIT_AUTH if code in _AUTH_CODES else EXIT_RPC_FAILED, rich)


def local_stack_ca(env: Mapping[str, str]) -> Path:
    """Where `make up` keeps the CA of the gateway's public certificate."""
    return Path(env.get("CARMESH_STACK_RUN_DIR") or ".run") / "tls" / "public" / "ca.pem"


@dataclass(frozen=True)
class Transport:
    """How the CLI reaches the gateway: TLS trusting ``ca_file`` (None: the system's roots), or plaintext."""

    plaintext: bool = False
    ca_file: Path | None = None

    @classmethod
    def choose(cls, plaintext: bool | None, ca: str | None, env: Mapping[str, str]) -> Transport:
        """--plaintext, or CARMESH_PLAINTEXT=1 without --tls (asked for, never a fallback); else TLS
        trusting --ca, $CARMESH_CA, the local stack's CA when `make up` wrote one, or the system's roots."""
        if ca and plaintext:
            raise CliError("--ca and --plaintext exclude each other", EXIT_USAGE)
        if plaintext is None:
            plaintext = env.get("CARMESH_PLAINTEXT", "").lower() in ("1", "true", "yes")
        if plaintext:
            return cls(plaintext=True)
        chosen = ca or env.get("CARMESH_CA")
        if chosen:
            return cls(ca_file=Path(chosen))
        local = local_stack_ca(env)
        return cls(ca_file=local if local.is_file() else None)

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.plaintext:
            return None
        if self.ca_file is None:
            return grpc.ssl_channel_credentials()
        try:
            return grpc.ssl_channel_credentials(self.ca_file.read_bytes())
        except OSError as exc:
            raise CliError(f"cannot read the CA file {self.ca_file}: {exc.strerror}", EXIT_USAGE) from exc

    def describe(self) -> str:
        if self.plaintext:
            return "plaintext"
        return f"TLS, trusting {self.ca_file}" if self.ca_file else "TLS, trusting the system's CAs"


@dataclass
class Connection:
    address: str
    api_key: str | None
    connect_timeout_s: float = 5.0
    transport: Transport = field(default_factory=Transport)

    def __post_init__(self) -> None:
        options = [
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ]
        credentials = self.transport.credentials()
        self.channel = (
            grpc.insecure_channel(self.address, options=options)
            if credentials is None
            else grpc.secure_channel(self.address, credentials, options=options)
        )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def ensure_reachable(self) -> None:
        """Fails with exit code 3 when nothing answers at the address, before any call is made."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=self.connect_timeout_s)
        except grpc.FutureTimeoutError:
            raise CliError(
                f"UNAVAILABLE: cannot reach the gateway at {self.address} within {self.connect_timeout_s:g}s "
                f"over {self.transport.describe()} (is it running? set --gateway or CARMESH_GATEWAY; "
                "a gateway on plaintext needs --plaintext, one on TLS from another CA needs --ca FILE)",
                EXIT_UNREACHABLE,
            ) from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
