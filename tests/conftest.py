"""Session fixtures that start real Redis, PostgreSQL, Tansu and MLflow processes on free
127.0.0.1 ports (the same launchers as ``make up``), each once per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import services
from devstack.procs import Process
from tests.helpers import SHARED, free_port


@pytest.fixture(scope="session")
def stack_config() -> Iterator[services.StackConfig]:
    # Not under pytest's 0700 temp root: PostgreSQL runs as its own user and must reach its data dir.
    run_dir = Path(tempfile.mkdtemp(prefix="carmesh-stack-"))
    os.chmod(run_dir, 0o755)
    ports = services.Ports(redis=free_port(), postgres=free_port(), kafka=free_port(), mlflow=free_port())
    yield services.StackConfig(run_dir=run_dir, ports=ports)
    shutil.rmtree(run_dir, ignore_errors=True)


def _run(proc: Process) -> Iterator[Process]:
    proc.start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def mlflow_uri(stack_config: services.StackConfig) -> Iterator[str]:
    if os.environ.get("CARMESH_TEST_MLFLOW_URI"):
        yield os.environ["CARMESH_TEST_MLFLOW_URI"]
        return
    for _ in _run(services.mlflow(stack_config)):
        yield stack_config.mlflow_uri


@pytest.fixture(scope="session")
def redis_url(stack_config: services.StackConfig) -> Iterator[str]:
    for _ in _run(services.redis(stack_config)):
        # With the password: tests connect directly (the stack's daemons read the password file).
        yield stack_config.redis_url_with_password()


@pytest.fixture(scope="session")
def postgres_dsn(stack_config: services.StackConfig) -> Iterator[str]:
    for _ in _run(services.postgres(stack_config)):
        services.create_databases(stack_config)
        yield stack_config.postgres_dsn_with_password()


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_config: services.StackConfig) -> Iterator[str]:
    for _ in _run(services.tansu(stack_config)):
        yield stack_config.kafka_bootstrap


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (real data and third-party models); absent only outside this workplace's CI."""
    if not SHARED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED} is missing in CI; tests that need real data must not skip there")
        pytest.skip(f"{SHARED} not present")
    return SHARED
