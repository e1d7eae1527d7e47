"""Settings of the gateway (env prefix ``CARMESH_GATEWAY_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from kit.config import BaseSettings


def _address(value: str) -> str:
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not a HOST:PORT address")
    return value.strip()


class Settings(BaseSettings):
    """The public gRPC door of carmesh: API keys, per-key rate limits, routing to healthy upstream daemons."""

    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port (0: any free port)")
    metrics_port: int = Field(9451, ge=0, le=65535, description="Prometheus /metrics port (0: any free port)")

    # Upstreams. The detector is a pool (round-robin over healthy replicas); the others are one address each.
    detector_addrs: list[str] = Field(
        default_factory=lambda: ["127.0.0.1:50061"], min_length=1, description="detector replicas, HOST:PORT"
    )
    registry_addr: str = Field("127.0.0.1:50064", description="registry_gateway address")
    ingestor_addr: str = Field("", description="ingestor address (empty: IngestService not exposed)")
    feature_addr: str = Field("", description="feature_service address (empty: FeatureService not exposed)")
    trainer_addr: str = Field("", description="trainer address (empty: TrainingService not exposed)")
    tracker_addr: str = Field("", description="tracker address (empty: TrackingService not exposed)")
    health_check_interval_s: float = Field(
        1.0, gt=0, le=300, description="how often each upstream's grpc.health.v1 is checked"
    )

    # Callers. Key formats are documented in gateway/auth.py.
    auth_required: bool = Field(True, description="reject calls without a known API key")
    api_keys_file: Path | None = Field(None, description="file of API keys, one `KEY NAME SCOPES` per line")
    api_keys: list[SecretStr] = Field(default_factory=list, description="API keys as KEY:NAME:SCOPE+SCOPE entries")
    rate_limit_rps: float = Field(50.0, ge=0, description="sustained calls per second per API key (0: unlimited)")
    rate_limit_burst: int = Field(100, ge=1, description="calls an API key may make at once before the rate applies")

    # Limits against exhaustion (docs/security.md, section 6); 0 disables each.
    max_concurrent_calls_per_key: int = Field(
        64, ge=0, description="calls (streams included) one API key may have in flight (0: unlimited)"
    )
    max_streams_per_key: int = Field(16, ge=0, description="streaming calls one API key may have open (0: unlimited)")
    stream_messages_per_s: float = Field(
        500.0, ge=0, description="client-stream messages per second per API key; faster streams are slowed (0: off)"
    )
    stream_messages_burst: int = Field(
        1000, ge=1, description="client-stream messages an API key may send at once before the pace applies"
    )
    max_stream_lifetime_s: float = Field(
        3600.0, ge=0, description="longest a streaming-response call lives; it then ends UNAVAILABLE (0: no limit)"
    )
    auth_failures_before_backoff: int = Field(
        10, ge=0, description="failed authentications from one address before it is refused unchecked (0: off)"
    )
    auth_failure_window_s: float = Field(
        60.0, gt=0, description="failed authentications further apart than this start counting again"
    )
    auth_backoff_s: float = Field(1.0, gt=0, description="first back-off of an address; doubles with each failure")
    auth_backoff_max_s: float = Field(300.0, gt=0, description="longest back-off of an address")

    # Deadlines for upstream calls. Streaming-response RPCs (watches, downloads, progress) keep
    # the client's deadline, since they are long-lived by design, up to max_stream_lifetime_s.
    default_deadline_s: float = Field(
        60.0, ge=0, description="deadline of unary-response calls whose client set none (0: none)"
    )
    max_deadline_s: float = Field(600.0, ge=0, description="cap on the deadline of unary-response calls (0: no cap)")

    # TLS on the public port: clients authenticate the gateway by this certificate, then themselves by API key.
    public_cert_file: Path | None = Field(None, description="TLS certificate chain (PEM) of the public gRPC port")
    public_key_file: Path | None = Field(None, description="the private key of public_cert_file (PEM)")
    public_plaintext: bool = Field(
        False, description="serve the public port without TLS: for local runs only (API keys then cross in clear)"
    )

    @model_validator(mode="after")
    def _public_tls_chosen(self) -> Settings:
        given = [name for name in ("public_cert_file", "public_key_file") if getattr(self, name) is not None]
        if self.public_plaintext and given:
            raise ValueError(f"public_plaintext is set together with {', '.join(given)}: choose one")
        if not self.public_plaintext and len(given) != 2:
            raise ValueError(
                "the public port needs TLS: set --public-cert-file and --public-key-file (`make up` writes them "
                "to .run/tls/), or --public-plaintext for a local run without TLS"
            )
        return self

    @field_validator("detector_addrs")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        return [_address(item) for item in value]

    @field_validator("registry_addr")
    @classmethod
    def _required_address(cls, value: str) -> str:
        return _address(value)

    @field_validator("ingestor_addr", "feature_addr", "trainer_addr", "tracker_addr")
    @classmethod
    def _optional_address(cls, value: str) -> str:
        return _address(value) if value.strip() else ""

    @field_validator("api_keys_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value
