"""The CLI's one gRPC channel to the gateway (or a daemon), its credentials, and exit codes."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class Connection:
    address: str
    api_key: str | None
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(
            self.address,
            options=[
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ],
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
                "(is it running? set --gateway or CARMESH_GATEWAY)",
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
