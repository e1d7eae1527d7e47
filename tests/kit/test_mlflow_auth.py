"""MLflow credentials of registry_gateway and the trainer (kit/mlflow_auth.py): a literal user or a user file,
and a password file; --check-config validates them without opening the files, a start with an unreadable
or empty file exits 2 naming the file and never its content, and MLflow's 401/403 become a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, UNAUTHENTICATED

from kit import mlflow_auth
from kit.config import ConfigError
from registry_gateway.errors import MlflowRefused, from_mlflow
from tests.helpers import REPO_ROOT
from tests.kit.test_check_config import check

SECRET = "hunter2-never-printed"
ENV_PREFIX = {"registry_gateway": "CARMESH_REGISTRY_", "trainer": "CARMESH_TRAINER_"}


def test_credentials_come_from_the_files_first_lines(tmp_path: Path) -> None:
    password, user = tmp_path / "password", tmp_path / "username"
    password.write_text(f"{SECRET}\nignored\n")
    user.write_text("bot\n")
    assert mlflow_auth.credentials_env("carmesh", password) == {
        "MLFLOW_TRACKING_USERNAME": "carmesh",
        "MLFLOW_TRACKING_PASSWORD": SECRET,
    }
    assert mlflow_auth.credentials_env("", password, user)["MLFLOW_TRACKING_USERNAME"] == "bot"
    assert mlflow_auth.credentials_env("", None) == {}
    environ: dict[str, str] = {}
    mlflow_auth.apply(mlflow_auth.credentials_env("", password, user), environ)
    assert environ == {"MLFLOW_TRACKING_USERNAME": "bot", "MLFLOW_TRACKING_PASSWORD": SECRET}


@pytest.mark.parametrize("content", [b"", b"\n  \n", b"\xff\xfe" + SECRET.encode()])
def test_an_empty_or_binary_file_is_named_without_its_content(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "password"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as refused:
        mlflow_auth.credentials_env("carmesh", path)
    assert str(path) in str(refused.value) and "MLflow password" in str(refused.value)
    assert SECRET not in str(refused.value)
    good = tmp_path / "good"
    good.write_text("pw\n")
    with pytest.raises(ConfigError, match="cannot read the MLflow username file"):
        mlflow_auth.credentials_env("", good, tmp_path / "absent")


def test_the_settings_come_as_a_user_and_a_password_or_not_at_all() -> None:
    mlflow_auth.check_settings("", None, None)
    mlflow_auth.check_settings("u", None, Path("p"))
    mlflow_auth.check_settings("", Path("u"), Path("p"))
    for user, user_file, password in [("u", None, None), ("", Path("u"), None), ("", None, Path("p"))]:
        with pytest.raises(ValueError, match="basic auth needs a user and a password"):
            mlflow_auth.check_settings(user, user_file, password)
    with pytest.raises(ValueError, match="not both"):
        mlflow_auth.check_settings("u", Path("u"), Path("p"))


@pytest.mark.parametrize("module", ["registry_gateway", "trainer"])
def test_check_config_validates_the_settings_without_opening_the_files(module: str, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text(SECRET)
    done = check(module, "--mlflow-username", "carmesh", "--mlflow-password-file", str(password))
    assert done.returncode == 0, done.stderr
    assert SECRET not in done.stdout + done.stderr
    # Files mounted only where the daemon runs: the check does not need them.
    prefix = ENV_PREFIX[module]
    env = {f"{prefix}MLFLOW_USERNAME_FILE": "/absent/username", f"{prefix}MLFLOW_PASSWORD_FILE": "/absent/password"}
    assert check(module, env=env).returncode == 0
    lonely = check(module, "--mlflow-username", "carmesh")
    assert lonely.returncode == 2 and "mlflow_password_file" in lonely.stderr
    both = check(module, "--mlflow-username", "a", env=env)
    assert both.returncode == 2 and "not both" in both.stderr


def _start(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CARMESH_", "MLFLOW_"))}
    return subprocess.run(
        [sys.executable, "-m", module, "--mesh-plaintext", "--grpc-port", "0", "--metrics-port", "0", *args],
        cwd=REPO_ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("module", ["registry_gateway", "trainer"])
def test_a_start_with_an_unreadable_or_empty_password_file_exits_2_naming_it(module: str, tmp_path: Path) -> None:
    where = (
        ["--cache-dir", str(tmp_path / "c")] if module == "registry_gateway" else ["--work-dir", str(tmp_path / "w")]
    )
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path in (tmp_path / "absent", empty):
        done = _start(module, *where, "--mlflow-username", "carmesh", "--mlflow-password-file", str(path))
        output = done.stdout + done.stderr
        assert done.returncode == 2, output
        assert str(path) in output and "Traceback" not in output


def test_mlflow_refusing_the_gateway_is_unavailable_naming_the_user_and_the_settings() -> None:
    for code in (UNAUTHENTICATED, PERMISSION_DENIED):
        error = from_mlflow(
            MlflowException("Response body: 'You are not authenticated'", error_code=code), "http://m", "bot"
        )
        assert isinstance(error, MlflowRefused) and error.code == grpc.StatusCode.UNAVAILABLE
        assert error.reason == "MLFLOW_CREDENTIALS_REFUSED"
        assert "refused user 'bot'" in str(error) and "mlflow_password_file" in str(error)
    anonymous = from_mlflow(MlflowException("401", error_code=UNAUTHENTICATED), "http://m")
    assert "without credentials" in str(anonymous)
