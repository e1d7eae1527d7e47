"""``python -m <daemon> --check-config``: settings loaded as at start-up, validated, printed; exit 0 or 2;
nothing opened. helm/carmesh's check (tests/deploy) runs it on every rendered container."""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys

import pytest

from kit.config import BaseSettings, unknown_env
from tests.helpers import REPO_ROOT

PLAINTEXT = {"mesh_plaintext": "--mesh-plaintext", "public_plaintext": "--public-plaintext"}
DAEMONS = ["gateway", "registry_gateway", "detector", "ingestor", "feature_service", "trainer"]


def plaintext_flags(module: str) -> list[str]:
    """Plaintext mesh (and public port) where the daemon has those settings: the tests choose it
    explicitly, as a daemon requires, and the flags only exist once mesh TLS is in the kit."""
    fields = importlib.import_module(f"{module}.app").DAEMON.settings.model_fields
    return [flag for name, flag in PLAINTEXT.items() if name in fields]


def check(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CARMESH_")}
    return subprocess.run(
        [sys.executable, "-m", module, "--check-config", *plaintext_flags(module), *args],
        cwd=REPO_ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("name", DAEMONS)
def test_defaults_pass_and_the_settings_are_printed(name: str) -> None:
    done = check(name)
    assert done.returncode == 0, done.stderr
    settings = json.loads(done.stdout)
    assert settings["grpc_port"] > 0 and "settings OK" in done.stderr


def test_environment_and_flags_are_read_as_at_start_up() -> None:
    done = check("detector", "--max-batch-size", "4", env={"CARMESH_DETECTOR_MAX_WAIT_MS": "7"})
    assert done.returncode == 0, done.stderr
    settings = json.loads(done.stdout)
    assert (settings["max_batch_size"], settings["max_wait_ms"]) == (4, 7.0)


def test_a_bad_value_exits_2_naming_the_variable() -> None:
    done = check("feature_service", env={"CARMESH_FEATURE_REDIS_URL": "http://nope"})
    assert done.returncode == 2
    assert "redis_url" in done.stderr and "CARMESH_FEATURE_REDIS_URL" in done.stderr
    assert done.stdout == ""


def test_a_misspelt_variable_exits_2() -> None:
    # Start-up would ignore it and run with the default batch size.
    done = check("detector", env={"CARMESH_DETECTOR_MAX_BATCH": "4", "CARMESH_DETECTOR_MODEL_ALIAS": "prod"})
    assert done.returncode == 2
    assert "CARMESH_DETECTOR_MAX_BATCH" in done.stderr and "MODEL_ALIAS" not in done.stderr


def test_an_unknown_flag_exits_2() -> None:
    done = check("gateway", "--detector-adrs", "a:1")
    assert done.returncode == 2 and "--detector-adrs" in done.stderr


def test_a_missing_model_file_exits_2() -> None:
    done = check("detector", "--model-path", "/nonexistent/model.onnx")
    assert done.returncode == 2 and "/nonexistent/model.onnx" in done.stderr


def test_nothing_is_opened_and_secrets_are_masked() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        # A start would fail on the port in use (exit 1); the check binds nothing.
        done = check(
            "gateway",
            "--grpc-port",
            port,
            "--metrics-port",
            port,
            env={"CARMESH_GATEWAY_API_KEYS": "s3cret-key-value:alice:detect"},
        )
    assert done.returncode == 0, done.stderr
    assert "s3cret-key-value" not in done.stdout + done.stderr


def test_unknown_env_looks_only_at_the_daemons_own_prefix() -> None:
    environ = {
        "CARMESH_TOY_GRPC_PORT": "1",
        "CARMESH_TOY_GRPC_PROT": "1",
        "CARMESH_OTHER_THING": "x",  # another daemon's or a tool's variable
        "HOME": "/root",
    }
    assert unknown_env(BaseSettings, "CARMESH_TOY_", environ) == ["CARMESH_TOY_GRPC_PROT"]


def test_an_abbreviated_flag_is_not_taken_for_the_setting() -> None:
    # argparse would read --max-batch as --max-batch-size; a chart's typo must not pass that way.
    done = check("detector", "--max-batch", "4")
    assert done.returncode == 2 and "--max-batch" in done.stderr
