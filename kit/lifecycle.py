"""Stopping a daemon: NOT_SERVING first, then the daemon's hook (stop intake, commit offsets),
then drain in-flight RPCs, then close resources in reverse order of opening."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from kit.server import Server

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Lifecycle:
    """Owns the close actions of what a daemon opened, so a failed start and a stop both undo it all."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._stack = contextlib.AsyncExitStack()

    def on_close(self, close: Callable[[], Awaitable[Any] | Any]) -> None:
        """Registers a close action (plain or async); actions run last-registered-first."""

        async def _close() -> None:
            result = close()
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await result

        self._stack.push_async_callback(_close)

    async def drain(self, server: Server, before_drain: Callable[[], Awaitable[None]]) -> None:
        log.info("stopping: NOT_SERVING, draining for up to %.1fs", self.grace_s)
        # First, so balancers stop routing here while the daemon's own hook runs.
        await server.stop_serving()
        await before_drain()
        await server.stop(self.grace_s)

    async def close(self) -> None:
        """Runs every close action; the first failure is raised after the others ran."""
        await self._stack.aclose()


@contextlib.contextmanager
def stop_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Calls ``stop`` on SIGTERM/SIGINT while the block runs; a second signal during the drain changes nothing."""
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)
    try:
        yield
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
