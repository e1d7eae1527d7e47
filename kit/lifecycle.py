"""SIGTERM handling: NOT_SERVING first, then drain in-flight RPCs, then close resources in
reverse order of opening."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from kit.server import Server

log = logging.getLogger(__name__)


class Lifecycle:
    """Owns the resources a daemon opens; :meth:`run` serves until SIGTERM/SIGINT."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.stack = contextlib.AsyncExitStack()
        self._stop = asyncio.Event()

    def on_close(self, close: Callable[[], Awaitable[Any] | Any]) -> None:
        """Registers a close action; actions run last-registered-first."""

        async def _close() -> None:
            result = close()
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await result

        self.stack.push_async_callback(_close)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, server: Server, before_drain: Callable[[], Awaitable[None]] | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self._stop.wait()
            log.info("stopping: NOT_SERVING, draining for up to %.1fs", self.grace_s)
            if before_drain is not None:
                await before_drain()
            await server.stop(self.grace_s)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stack.aclose()
            log.info("stopped")
