"""Backing stores of a test's own that it can stop and start again on the same port (the session's
serve every other test): PostgreSQL and Redis as real processes stopped and started, Tansu and
MLflow behind a TCP proxy that is cut and restored (Tansu here keeps its data in memory only, so
a stopped broker would come back empty; MLflow takes ~30 s to start)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from devstack import services
from devstack.procs import Process
from tests.helpers import REPO_ROOT, free_port
from tests.ingestor.proxy import TcpProxy
from tests.support import eventually


@dataclass
class RestartableStore:
    """One store of the test's own: ``stop()`` takes it away, ``start()`` brings it back on the same port."""

    name: str
    address: str  # what daemons connect to (a URL with the password where the store has one)
    process: Process | None = None
    proxy: TcpProxy | None = None
    # PostgreSQL's SIGTERM is a "smart" shutdown that lets open sessions carry on: SIGINT (a "fast"
    # shutdown) ends them at once, as a server that goes away does.
    stop_signal: signal.Signals = signal.SIGTERM

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.cut()
            return
        assert self.process is not None
        pid = self.process.pid()
        if pid is not None and self.stop_signal != signal.SIGTERM:
            os.kill(pid, self.stop_signal)
            eventually(lambda: self.process is not None and self.process.pid() is None, what=f"{self.name} to stop")
        self.process.stop()  # SIGTERM, then SIGKILL; forgets the pid file

    def start(self) -> None:
        if self.proxy is not None:
            self.proxy.restore()
        else:
            assert self.process is not None
            _start_from_a_clean_process(self.process)
            self.process.wait_ready()


# Starts a devstack Process from a fresh interpreter: PostgreSQL's start switches user, so it
# forks (no vfork); a fork of this test process while gRPC's threads run crashed the child now
# and then (SIGSEGV before exec). The helper has no gRPC loaded; the pid file tells us the rest.
_START = """
import json, sys
from pathlib import Path
from devstack.procs import Process
s = json.load(sys.stdin)
Process(s["name"], s["argv"], Path(s["run_dir"]), ready=lambda: True, env=s["env"], user=s["user"]).start()
"""


def _start_from_a_clean_process(process: Process) -> None:
    spec = {"name": process.name, "argv": list(process.argv), "run_dir": str(process.run_dir)}
    spec |= {"env": dict(process.env), "user": process.user}
    # The spec goes by stdin: its environment may hold a secret, which argv would show in `ps`.
    subprocess.run(
        [sys.executable, "-c", _START], input=json.dumps(spec), text=True, check=True, cwd=REPO_ROOT, timeout=60
    )


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
        store = RestartableStore(
            "postgres", cfg.postgres_dsn_with_password(), services.postgres(cfg), stop_signal=signal.SIGINT
        )
        with _running(store):
            services.create_databases(cfg, ("carmesh",))
            yield store


@contextlib.contextmanager
def own_redis(stack_config: services.StackConfig) -> Iterator[RestartableStore]:
    """A private Redis (no persistence: it comes back empty, as after a crash)."""
    with (
        _own_config(stack_config, redis=free_port()) as cfg,
        _running(RestartableStore("redis", cfg.redis_url_with_password(), services.redis(cfg))) as store,
    ):
        yield store


@contextlib.contextmanager
def mlflow_behind_proxy(mlflow_uri: str) -> Iterator[RestartableStore]:
    """The session's MLflow seen through a proxy: ``stop()`` refuses connections and resets the open
    ones, which is all a client can tell of a stopped server; a real restart of MLflow costs ~30 s
    a start here, too slow for the suite. ``address`` is the tracking URI to give the registry."""
    target = urlsplit(mlflow_uri)
    assert target.hostname in ("127.0.0.1", "localhost") and target.port, f"a local MLflow, not {mlflow_uri}"
    proxy = TcpProxy(target.port).start()
    try:
        yield RestartableStore("mlflow", f"http://127.0.0.1:{proxy.port}", proxy=proxy)
    finally:
        proxy.cut()


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
