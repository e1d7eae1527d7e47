"""`make up`'s stores need passwords (issue 16, hole 3): Redis and PostgreSQL refuse callers without
them, MLflow runs its basic auth, and the passwords reach the daemons through files (PostgreSQL's
also through libpq's environment for MLflow's own store), never through a command line (`ps`) or a log."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import sqlite3
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from grpc_status import rpc_status

from carmesh.v1 import (
    feature_pb2,
    feature_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    tracking_pb2,
    tracking_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from devstack import services
from devstack.mlflow_users import FAST_METHOD
from devstack.procs import Process
from kit.config import ConfigError
from kit.mesh_tls import MeshTls, mesh_channel_sync
from kit.secret_files import read_password
from tests.helpers import DaemonProcess, free_port
from tests.status_details import details_of
from tests.support import eventually
from trainer.phases import HOLD_ENV, JobPhase
from trainer.synthetic import write_dataset


async def _redis_ping(url: str) -> None:
    client = aioredis.from_url(url)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def test_redis_refuses_a_caller_without_the_password(stack_config: services.StackConfig, redis_url: str) -> None:
    await _redis_ping(redis_url)  # the fixture's URL carries the password
    with pytest.raises(redis.exceptions.AuthenticationError):
        await _redis_ping(stack_config.redis_url)
    with pytest.raises(redis.exceptions.AuthenticationError):
        await _redis_ping(stack_config.redis_url.replace("redis://", "redis://:wrong@"))


async def test_postgres_refuses_a_wrong_or_missing_password(
    stack_config: services.StackConfig, postgres_dsn: str
) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    await conn.close()
    with pytest.raises(asyncpg.exceptions.InvalidPasswordError):
        await asyncpg.connect(stack_config.postgres_dsn, password="wrong")
    # No password at all: libpq's variables must not hand one in behind the test's back.
    with pytest.raises((asyncpg.exceptions.InvalidPasswordError, asyncpg.exceptions.ClientCannotConnectError)):
        await asyncpg.connect(stack_config.postgres_dsn, password="", passfile=os.devnull)


def test_password_files_are_private(stack_config: services.StackConfig, redis_url: str, postgres_dsn: str) -> None:
    for path in (stack_config.redis_password_file, stack_config.postgres_password_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert len(path.read_text().strip()) >= 32
    assert stat.S_IMODE((stack_config.run_dir / "redis" / "redis.conf").stat().st_mode) == 0o600


def _session_pids(leader: int) -> list[int]:
    """Every process of ``leader``'s session: devstack starts each service in a session of its own."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == leader:  # field 6 of stat: the session id
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def secret_stack(
    stack_config: services.StackConfig, redis_url: str, postgres_dsn: str, kafka_bootstrap: str
) -> Iterator[tuple[services.StackConfig, list[Process]]]:
    """feature_service, registry_gateway and MLflow (basic auth) on PostgreSQL, started by `make up`'s
    launchers next to the session's Redis and PostgreSQL (same run dir: same password files), over
    mutual TLS with the run dir's mesh certificates."""
    ports = dataclasses.replace(
        stack_config.ports,
        kafka=int(kafka_bootstrap.rsplit(":", 1)[1]),
        mlflow=free_port(),
        feature=free_port(),
        feature_metrics=free_port(),
        registry=free_port(),
        registry_metrics=free_port(),
        tracker=free_port(),
        tracker_metrics=free_port(),
    )
    backend = f"postgresql+psycopg2://postgres@{services.HOST}:{ports.postgres}/mlflow"
    cfg = dataclasses.replace(stack_config, ports=ports, mlflow_backend_uri=backend, mlflow_auth=True)
    cfg.ensure_pki()
    procs = [
        services.mlflow(cfg),
        services.feature_service(cfg),
        services.registry_gateway(cfg),
        services.tracker(cfg),
    ]
    try:
        for proc in procs:
            # The session's MLflow fixture may hold the name "mlflow" in this run dir: ours is "mlflow-pg".
            if proc.name == "mlflow":
                proc.name = "mlflow-pg"
            if proc.name == "registry_gateway":
                proc.name = "registry-auth"
            proc.start()
            proc.wait_ready()
        yield cfg, procs
    finally:
        for proc in procs:
            proc.stop()


def test_the_daemons_use_the_passwords(secret_stack: tuple[services.StackConfig, list[Process]]) -> None:
    cfg, _ = secret_stack
    # feature_service is SERVING, so its pool logged in to PostgreSQL; Redis answers it too.
    with mesh_channel_sync(f"{services.HOST}:{cfg.ports.feature}", gateway_identity(cfg)) as channel:
        try:
            feature_pb2_grpc.FeatureServiceStub(channel).GetOnlineFeatures(
                feature_pb2.GetOnlineFeaturesRequest(camera_id="cam-secret-probe"), timeout=10
            )
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()
    # The tracker created its tables and answers from PostgreSQL, through its password file.
    with mesh_channel_sync(f"{services.HOST}:{cfg.ports.tracker}", gateway_identity(cfg)) as channel:
        listed = tracking_pb2_grpc.TrackingServiceStub(channel).ListCameraLayouts(
            tracking_pb2.ListCameraLayoutsRequest(camera_id="cam-secret-probe"), timeout=10
        )
        assert list(listed.layouts) == []
    # MLflow answers from its PostgreSQL store, which it reached with PGPASSWORD.
    rows = asyncio.run(_experiments(cfg))
    assert "Default" in rows


def gateway_identity(cfg: services.StackConfig) -> MeshTls:
    leaf, ca = cfg.mesh_pki.leaf("gateway"), cfg.mesh_pki.ca
    return MeshTls(ca.cert_file.read_bytes(), leaf.cert_file.read_bytes(), leaf.key_file.read_bytes())


def test_mlflow_refuses_callers_without_the_password(secret_stack: tuple[services.StackConfig, list[Process]]) -> None:
    cfg, _ = secret_stack
    url = f"{cfg.mlflow_uri}/api/2.0/mlflow/registered-models/search"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(url, timeout=10)
    assert anonymous.value.code == 401
    wrong = urllib.request.Request(url, headers={"Authorization": _basic(services.MLFLOW_USER, "wrong")})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(wrong, timeout=10)
    assert refused.value.code == 401
    password = cfg.mlflow_password_file.read_text().strip()
    good = urllib.request.Request(url, headers={"Authorization": _basic(services.MLFLOW_USER, password)})
    with urllib.request.urlopen(good, timeout=10) as reply:
        assert reply.status == 200
    assert stat.S_IMODE((cfg.run_dir / "mlflow" / "basic_auth.ini").stat().st_mode) == 0o600
    # The admin's hash is the cheap one (devstack/mlflow_users.py): scrypt cost ~95 ms of CPU per request.
    with sqlite3.connect(cfg.run_dir / "mlflow" / "auth.db") as db:
        (stored,) = db.execute("SELECT password_hash FROM users WHERE username = ?", (services.MLFLOW_USER,)).fetchone()
    assert stored.startswith(FAST_METHOD + "$") and password not in stored
    # registry_gateway read the password from its file (--mlflow-password-file) and reads the registry.
    with mesh_channel_sync(f"{services.HOST}:{cfg.ports.registry}", gateway_identity(cfg)) as channel:
        registry_pb2_grpc.RegistryServiceStub(channel).ListModels(registry_pb2.ListModelsRequest(), timeout=30)


def test_a_wrong_mlflow_password_is_a_clear_error_not_a_traceback(
    secret_stack: tuple[services.StackConfig, list[Process]], tmp_path: Path
) -> None:
    """registry_gateway with a password MLflow refuses: start-up says so in its log, each call answers
    UNAVAILABLE naming the user and the settings to fix, and the password shows nowhere."""
    cfg, _ = secret_stack
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-mlflow-password\n")
    args = ["--mlflow-tracking-uri", cfg.mlflow_uri, "--cache-dir", str(tmp_path / "cache")]
    args += ["--mlflow-username", services.MLFLOW_USER, "--mlflow-password-file", str(wrong)]
    with DaemonProcess("registry_gateway", args, timeout_s=90) as daemon:
        eventually(lambda: "refuses the gateway's credentials" in daemon.log(), what="the start-up check's error")
        with grpc.insecure_channel(daemon.address) as channel, pytest.raises(grpc.RpcError) as refused:
            registry_pb2_grpc.RegistryServiceStub(channel).ListModels(registry_pb2.ListModelsRequest(), timeout=30)
        log = daemon.log()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"refused user '{services.MLFLOW_USER}'" in str(refused.value.details())
    status = rpc_status.from_call(refused.value)
    assert status is not None and details_of(status)["ErrorInfo"].reason == "MLFLOW_CREDENTIALS_REFUSED"
    assert "Traceback" not in log
    for secret in ("not-the-mlflow-password", cfg.mlflow_password_file.read_text().strip()):
        assert secret not in log and secret not in str(refused.value.details())


def test_training_workers_log_in_to_mlflow_with_the_file_job_json_names(
    secret_stack: tuple[services.StackConfig, list[Process]], tmp_path: Path
) -> None:
    """The trainer's workers read the password from the file whose path is in job.json, at each start: a
    job started with the right password opens its MLflow run; after the file changes to a password MLflow
    refuses, the next job fails with the user named and no retry, and the password is in no job file."""
    cfg, _ = secret_stack
    password = tmp_path / "mlflow-password"
    password.write_text(cfg.mlflow_password_file.read_text())
    data = write_dataset(tmp_path / "data", train_images=2, val_images=1, width=160, height=96, seed=3)
    held, refused = f"mlflow-auth-held-{os.getpid()}", f"mlflow-auth-refused-{os.getpid()}"
    hold = tmp_path / "hold.json"
    hold.write_text(json.dumps({held: JobPhase.TRAINING.value}))  # waits there, its run already open
    args = ["--work-dir", str(tmp_path / "work"), "--mlflow-tracking-uri", cfg.mlflow_uri]
    args += ["--mlflow-username", services.MLFLOW_USER, "--mlflow-password-file", str(password)]
    args += ["--registry-addr", f"127.0.0.1:{free_port()}", "--allowed-roots", str(tmp_path), "--stop-grace-s", "5"]
    args += ["--max-running-jobs", "2", "--cpu-threads", "1"]

    def start(stub: training_pb2_grpc.TrainingServiceStub, model: str) -> str:
        config = training_pb2.TrainingConfig(preset="n", input_width=64, input_height=64, epochs=1, batch_size=2)
        started = stub.StartTraining(
            training_pb2.StartTrainingRequest(dataset=str(data), config=config, model_name=model), timeout=30
        )
        return started.job.job_id

    def job(stub: training_pb2_grpc.TrainingServiceStub, job_id: str) -> training_pb2.TrainingJob:
        return stub.GetTrainingJob(training_pb2.GetTrainingJobRequest(job_id=job_id), timeout=10).job

    jobs = tmp_path / "work" / "jobs"
    with (
        DaemonProcess("trainer", args, env={HOLD_ENV: str(hold)}, timeout_s=60) as daemon,
        grpc.insecure_channel(daemon.address) as channel,
    ):
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        first = start(stub, held)
        opened = eventually(lambda: job(stub, first).mlflow_run_id, what="the run of the job", timeout_s=240)
        spec = json.loads((jobs / first / "job.json").read_text())
        assert (spec["mlflow_username"], spec["mlflow_password_file"]) == (services.MLFLOW_USER, str(password))
        password.write_text("rotated-to-a-wrong-one\n")
        second = start(stub, refused)
        failed = eventually(
            lambda: (j := job(stub, second)).state == training_pb2.TRAINING_STATE_FAILED and j,
            what="the job with a refused password to fail",
            timeout_s=240,
        )
        stub.CancelTrainingJob(training_pb2.CancelTrainingJobRequest(job_id=first), timeout=60)
    assert opened and f"refused user '{services.MLFLOW_USER}'" in failed.error, failed.error
    # Refused credentials do not get better by retrying: no restart from a checkpoint.
    assert json.loads((jobs / second / "state.json").read_text())["restarts"] == 0
    secrets = (cfg.mlflow_password_file.read_text().strip(), "rotated-to-a-wrong-one")
    for path in (tmp_path / "work").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".log"):
            assert not any(s in path.read_text(errors="replace") for s in secrets), path


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def _experiments(cfg: services.StackConfig) -> list[str]:
    conn = await asyncpg.connect(cfg.postgres_dsn_with_password("mlflow"))
    try:
        return [r["name"] for r in await conn.fetch("select name from experiments")]
    finally:
        await conn.close()


def test_no_password_on_a_command_line_or_in_a_log(
    stack_config: services.StackConfig, secret_stack: tuple[services.StackConfig, list[Process]]
) -> None:
    cfg, procs = secret_stack
    passwords = [
        cfg.redis_password_file.read_text().strip(),
        cfg.postgres_password_file.read_text().strip(),
        cfg.mlflow_password_file.read_text().strip(),
        (cfg.run_dir / "secrets" / "mlflow-flask-key").read_text().strip(),
    ]
    names = ["redis", "postgres", *(proc.name for proc in procs)]
    leaders = [Process(name, [], cfg.run_dir, ready=lambda: True).pid() for name in names]
    assert all(leaders), dict(zip(names, leaders, strict=True))
    # What each launcher execs (Redis rewrites its /proc title once started, hiding its arguments).
    for proc in (services.redis(cfg), services.postgres(cfg), *procs):
        assert not any(p in arg for arg in proc.argv for p in passwords), f"a password in {proc.name}'s arguments"
    # MLflow's clients get the user and the file's path, and no password in their environment either.
    for client in (services.registry_gateway(cfg), services.trainer(cfg)):
        assert client.argv[client.argv.index("--mlflow-password-file") + 1] == str(cfg.mlflow_password_file)
        assert not any(p in value for value in client.env.values() for p in passwords), client.name
        assert "MLFLOW_TRACKING_PASSWORD" not in client.env
    checked = 0
    for leader in leaders:
        assert leader is not None
        for pid in _session_pids(leader):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            checked += 1
            assert not any(p in cmdline for p in passwords), f"a password on the command line of {pid}"
    # Redis, the PostgreSQL server and its backends, MLflow and its workers, feature_service.
    assert checked >= len(names)
    logs = sorted((cfg.run_dir / "logs").glob("*.log"))
    assert {f"{name}.log" for name in names} <= {log.name for log in logs}
    for log in logs:
        text = log.read_text(errors="replace")
        assert not any(p in text for p in passwords), f"a password in {log}"


def test_feature_service_reads_the_first_line_and_names_a_bad_file_without_its_content(tmp_path: Path) -> None:
    good = tmp_path / "pw"
    good.write_text("s3cret-line\nignored\n")
    assert read_password(good) == "s3cret-line"
    assert read_password(None) is None
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_password(empty)
    with pytest.raises(ConfigError, match="cannot read the password file"):
        read_password(tmp_path / "missing")
