"""The one daemon skeleton: build, start, drain, close.

A daemon is a :class:`DaemonSpec`: its name, settings, environment prefix and a ``build``
function that wires its parts from settings. The skeleton owns the rest:

1. the metrics registry and /metrics server (``metrics_port``, ``--no-metrics`` for none);
2. ``build(cfg, ctx)``: the daemon opens what it needs, registering each close with
   ``ctx.on_close``, and creates its one gRPC server with ``ctx.grpc_server(...)``;
3. the gRPC server starts, every service NOT_SERVING, then :meth:`Daemon.start` (the daemon
   says SERVING when it is), then the ready file (``ready_file``) is written;
4. on SIGTERM: NOT_SERVING, :meth:`Daemon.before_drain` (stop intake, commit offsets), drain
   in-flight RPCs for ``shutdown_grace_s``, close everything in reverse order of opening.

A start that fails at any step closes what was opened before it and raises; kit.main turns
:class:`StartupError` and ``ConfigError`` into exit code 2 and ``OSError`` into 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc

from kit.config import BaseSettings
from kit.lifecycle import Lifecycle, stop_signals
from kit.mesh_tls import CallerPolicy, MeshTls, load_mesh_tls, mesh_channel
from kit.metrics import Metrics, MetricsHttpServer
from kit.server import Server, channel_options

log = logging.getLogger(__name__)

SettingsT = TypeVar("SettingsT", bound=BaseSettings)
DaemonT = TypeVar("DaemonT", bound="Daemon")

# Addresses a daemon listens on for every interface; the ready file names one a client can dial.
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


class StartupError(Exception):
    """A start-up failure the operator must fix (a bad model file, a database schema that cannot
    be migrated); the daemon exits with code 2 and this message."""


class Daemon:
    """A daemon's own parts, built by its spec's ``build``; the hooks default to doing nothing.

    Closing is not a hook: ``build`` registers each close with ``ctx.on_close`` as it opens
    the resource, so a build that fails half-way closes exactly what it had opened.
    """

    async def start(self) -> None:
        """Runs once the gRPC server accepts connections (every service NOT_SERVING): set SERVING
        when ready, start consumers and background work. Raising here fails the start."""

    async def before_drain(self) -> None:
        """Runs on SIGTERM after NOT_SERVING and before in-flight RPCs drain: stop taking work
        in (sources, consumers, watch streams) and commit what was done."""


class Context:
    """What the skeleton lends a daemon's ``build``: metrics, the close registry and its gRPC server."""

    def __init__(self, cfg: BaseSettings, metrics: Metrics, lifecycle: Lifecycle, mesh_tls: MeshTls | None) -> None:
        self.metrics = metrics
        # This daemon's mesh identity (None under --mesh-plaintext): its server and its client calls use it.
        self.mesh_tls = mesh_tls
        self._cfg = cfg
        self._lifecycle = lifecycle
        self._server: Server | None = None

    def on_close(self, close: Callable[[], Awaitable[Any] | Any]) -> None:
        """Registers a close action (plain or async); they run last-registered-first."""
        self._lifecycle.on_close(close)

    def background(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Runs ``work`` as a task that is cancelled, and waited for, on close."""
        task = asyncio.create_task(work, name=name)

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self.on_close(stop)
        return task

    def channel(self, target: str, max_message_bytes: int | None = None) -> grpc.aio.Channel:
        """A channel to another daemon, presenting this daemon's mesh certificate (plaintext under
        --mesh-plaintext), with the project's message limits."""
        limit = max_message_bytes if max_message_bytes is not None else self._cfg.max_message_bytes
        return mesh_channel(target, self.mesh_tls, channel_options(limit))

    def grpc_server(
        self,
        service_names: Sequence[str],
        *,
        callers: CallerPolicy | None,
        public_credentials: grpc.ServerCredentials | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        extra_options: Sequence[tuple[str, Any]] = (),
    ) -> Server:
        """The daemon's one gRPC server on ``host:grpc_port`` (bound now, started by the skeleton).

        ``callers``: the mesh identities allowed per method; the server then requires mesh client
        certificates (unless --mesh-plaintext). None marks a public port (the gateway's): it serves
        ``public_credentials`` (TLS, or None for plaintext) and callers prove themselves by API key.
        """
        if self._server is not None:
            raise RuntimeError("a daemon has one gRPC server; grpc_server() was called twice")
        cfg = self._cfg
        if callers is None:
            credentials, authorize = public_credentials, None
        elif self.mesh_tls is None:
            credentials, authorize = None, None
        else:
            credentials, authorize = self.mesh_tls.server_credentials(), callers.authorize
        server = Server(
            host=cfg.host,
            port=cfg.grpc_port,
            service_names=service_names,
            metrics=self.metrics,
            max_message_bytes=cfg.max_message_bytes,
            interceptors=interceptors,
            extra_options=extra_options,
            credentials=credentials,
            authorize=authorize,
        )
        # Registered here so it closes before whatever the servicers use, opened earlier.
        self.on_close(lambda: server.stop(0))
        self._server = server
        return server

    @property
    def server(self) -> Server:
        if self._server is None:
            raise RuntimeError("build() returned without creating its gRPC server (ctx.grpc_server)")
        return self._server


@dataclass(frozen=True)
class DaemonSpec(Generic[SettingsT, DaemonT]):
    """What the skeleton needs to know of a daemon; each daemon's app.py defines one."""

    name: str  # the service label in logs and metrics, and the module run as ``python -m NAME``
    settings: type[SettingsT]
    env_prefix: str  # CARMESH_<DAEMON>_
    build: Callable[[SettingsT, Context], Awaitable[DaemonT]]


@dataclass(frozen=True)
class Running(Generic[DaemonT]):
    """A started daemon, as :func:`running` yields it; addresses are ones a client on this host can dial."""

    daemon: DaemonT
    server: Server
    metrics: Metrics
    grpc_address: str
    metrics_address: str | None


def _dialable(host: str, port: int) -> str:
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"{host}:{port}"


def write_ready_file(path: Path, grpc_address: str, metrics_address: str | None) -> None:
    """Writes the addresses atomically (a temporary file renamed), so a reader never sees half a file."""
    payload = json.dumps({"grpc": grpc_address, "metrics": metrics_address, "pid": os.getpid()})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(payload + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


async def _start(spec: DaemonSpec[SettingsT, DaemonT], cfg: SettingsT, lifecycle: Lifecycle) -> Running[DaemonT]:
    metrics = Metrics(spec.name)
    metrics_http: MetricsHttpServer | None = None
    if cfg.metrics:
        metrics_http = MetricsHttpServer(metrics, cfg.host, cfg.metrics_port)
        lifecycle.on_close(metrics_http.close)
    try:
        mesh_tls = await asyncio.to_thread(load_mesh_tls, cfg)
    except OSError as exc:
        raise StartupError(f"cannot read the mesh TLS files: {exc.strerror} ({exc.filename})") from exc
    ctx = Context(cfg, metrics, lifecycle, mesh_tls)
    daemon = await spec.build(cfg, ctx)
    server = ctx.server
    # Nothing is SERVING until the daemon's start says so.
    await server.set_serving(False)
    await server.start()
    await daemon.start()
    metrics_address = _dialable(cfg.host, metrics_http.port) if metrics_http is not None else None
    started = Running(daemon, server, metrics, _dialable(cfg.host, server.port), metrics_address)
    if cfg.ready_file is not None:
        ready_file = cfg.ready_file
        await asyncio.to_thread(write_ready_file, ready_file, started.grpc_address, started.metrics_address)
        # A file left behind would tell the next launcher about ports nobody listens on.
        lifecycle.on_close(lambda: ready_file.unlink(missing_ok=True))
    log.info("%s started: gRPC %s, metrics %s", spec.name, started.grpc_address, started.metrics_address or "off")
    return started


@contextlib.asynccontextmanager
async def running(spec: DaemonSpec[SettingsT, DaemonT], cfg: SettingsT) -> AsyncIterator[Running[DaemonT]]:
    """The daemon started in this process; leaving the block drains and closes it, as SIGTERM does.

    A failed start closes what was opened before the failure, then raises the failure.
    """
    lifecycle = Lifecycle(cfg.shutdown_grace_s)
    try:
        started = await _start(spec, cfg, lifecycle)
    except BaseException:
        try:
            await lifecycle.close()
        except Exception:
            log.exception("closing after a failed start failed too")
        raise
    try:
        yield started
        await lifecycle.drain(started.server, started.daemon.before_drain)
    finally:
        await lifecycle.close()
        log.info("stopped")


async def serve(spec: DaemonSpec[SettingsT, DaemonT], cfg: SettingsT) -> None:
    """Runs the daemon until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    with stop_signals(stop.set):
        async with running(spec, cfg):
            await stop.wait()
