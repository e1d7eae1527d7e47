"""Backing stores of a test's own that it can stop and start again on the same port (the session's
serve every other test): PostgreSQL and Redis as real processes, MLflow as a real server on its
sqlite store, and Tansu behind a TCP proxy (Tansu here keeps its data in memory only, so a
stopped broker would come back empty: cutting the proxy is the outage that keeps the data)."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devstack import services
from devstack.procs import Process
from tests.helpers import free_port
from tests.ingestor.proxy import TcpProxy


@dataclass
class RestartableStore:
    """One store of the test's own: ``stop()`` takes it away, ``start()`` brings it back on the same port."""

    name: str
    address: str  # what daemons connect to (a URL with the password where the store has one)
    process: Process | None = None
    proxy: TcpProxy | None = None

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.cut()
        else:
            assert self.process is not None
            self.process.stop()

    def start(self) -> None:
        if self.proxy is not None:
            self.proxy.restore()
        else:
            assert self.process is not None
            self.process.start()
            self.process.wait_ready()


@contextlib.contextmanager
def _own_config(stack_config: services.StackConfig, **ports: int) -> Iterator[services.StackConfig]:
    # Not under pytest's 0700 temp root: PostgreSQL runs as its own user and must reach its data dir.
    run_dir = Path(tempfile.mkdtemp(prefix="carmesh-outage-"))
    run_dir.chmod(0o755)
    try:
        yield dataclasses.replace(stack_config, run_dir=run_dir, ports=dataclasses.replace(stack_config.ports, **ports))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@contextlib.contextmanager
def _running(store: RestartableStore) -> Iterator[RestartableStore]:
    assert store.process is not None
    store.process.start()
    try:
        store.process.wait_ready()
        yield store
    finally:
        store.process.stop()


@contextlib.contextmanager
def own_postgres(stack_config: services.StackConfig) -> Iterator[RestartableStore]:
    """A private PostgreSQL server; ``address`` is the DSN of its (empty) ``carmesh`` database."""
    with _own_config(stack_config, postgres=free_port()) as cfg:
        store = RestartableStore("postgres", cfg.postgres_dsn_with_password(), services.postgres(cfg))
        with _running(store):
            services.create_databases(cfg, ("carmesh",))
            yield store


@contextlib.contextmanager
def own_redis(stack_config: services.StackConfig) -> Iterator[RestartableStore]:
    """A private Redis (no persistence: it comes back empty, as after a crash)."""
    with _own_config(stack_config, redis=free_port()) as cfg:
        with _running(RestartableStore("redis", cfg.redis_url_with_password(), services.redis(cfg))) as store:
            yield store


@contextlib.contextmanager
def own_mlflow(stack_config: services.StackConfig) -> Iterator[RestartableStore]:
    """A private MLflow server on its own sqlite store and artifacts folder (both survive a restart)."""
    with _own_config(stack_config, mlflow=free_port()) as cfg:
        with _running(RestartableStore("mlflow", cfg.mlflow_uri, services.mlflow(cfg))) as store:
            yield store


@contextlib.contextmanager
def own_kafka(tmp_path: Path) -> Iterator[RestartableStore]:
    """A private Tansu that advertises a proxy's address: ``stop()`` refuses new connections and
    resets the open ones, as a broker that went away; the broker keeps its topics and offsets."""
    broker_port = free_port()
    proxy = TcpProxy(broker_port).start()
    argv = [services.tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{broker_port}"]
    argv += ["--advertised-listener-url", f"tcp://127.0.0.1:{proxy.port}", "--storage-engine", "memory://tansu/"]
    broker = Process("tansu-outage", argv, tmp_path, ready=lambda: services.tcp_open(broker_port))
    broker.start()
    try:
        broker.wait_ready()
        yield RestartableStore("kafka", f"127.0.0.1:{proxy.port}", proxy=proxy)
    finally:
        proxy.cut()
        broker.stop()
