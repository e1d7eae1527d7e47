from __future__ import annotations

import pytest
from pydantic import Field

from kit.config import BaseSettings, ConfigError, load_settings


class DemoSettings(BaseSettings):
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
