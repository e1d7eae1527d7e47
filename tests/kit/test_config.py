from __future__ import annotations

import pytest
from pydantic import Field, ValidationError, ValidationInfo, field_validator

from kit.config import BaseSettings, ConfigError, load_settings, not_below, stripped_entries


class DemoSettings(BaseSettings):
    mesh_plaintext: bool = True  # these tests are about loading, not TLS
    max_wait_ms: float = Field(default=5.0, ge=0)
    classes: list[str] = Field(default_factory=list)
    warm_up: bool = True


def test_defaults_env_then_flags() -> None:
    env = {"CARMESH_DEMO_MAX_WAIT_MS": "7.5", "CARMESH_DEMO_CLASSES": "car, truck", "CARMESH_DEMO_GRPC_PORT": "1234"}
    cfg = load_settings(DemoSettings, "CARMESH_DEMO_", ["--max-wait-ms", "9", "--no-warm-up"], environ=env)
    assert cfg.max_wait_ms == 9.0
    assert cfg.classes == ["car", "truck"]
    assert cfg.grpc_port == 1234
    assert cfg.warm_up is False
    assert load_settings(DemoSettings, "CARMESH_DEMO_", [], environ={}).max_wait_ms == 5.0


def test_invalid_value_names_field_and_where_to_set_it() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(DemoSettings, "CARMESH_DEMO_", [], environ={"CARMESH_DEMO_MAX_WAIT_MS": "-1"})
    assert "max_wait_ms" in str(err.value)
    assert "CARMESH_DEMO_MAX_WAIT_MS" in str(err.value)


def test_unknown_flag_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        load_settings(DemoSettings, "CARMESH_DEMO_", ["--no-such-flag", "1"], environ={})


class RetrySettings(BaseSettings):
    mesh_plaintext: bool = True
    retry_initial_s: float = 1.0
    retry_max_s: float = 5.0
    names: list[str] = Field(default_factory=list)

    @field_validator("retry_max_s")
    @classmethod
    def _max(cls, value: float, info: ValidationInfo) -> float:
        return not_below(value, info, "retry_initial_s")

    @field_validator("names")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return stripped_entries(value)


def test_shared_validators() -> None:
    cfg = load_settings(RetrySettings, "X_", ["--names", " car , bus"], environ={})
    assert cfg.names == ["car", "bus"]
    with pytest.raises(ConfigError, match="must be >= retry_initial_s"):
        load_settings(RetrySettings, "X_", ["--retry-initial-s", "9"], environ={})
    # Flags and env drop empty items while splitting; settings built in code are checked too.
    with pytest.raises(ValidationError, match="must not be blank"):
        RetrySettings(names=["car", "  "])
