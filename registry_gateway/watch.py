"""One shared poll loop that watches MLflow aliases for every WatchAlias stream.

Streams subscribe to a (model, alias) key; the loop polls each key with subscribers once per
interval and fans changes out to the subscribers' queues. A key nobody watches is dropped.
While MLflow is unreachable the loop logs and keeps retrying; streams stay open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from kit.errors import DomainError, NotFound
from registry_gateway.schema import ModelVersionInfo

log = logging.getLogger(__name__)

Key = tuple[str, str]
# None: the alias is not set. A closed watcher sends _CLOSED to end the streams.
Update = ModelVersionInfo | None
_CLOSED = object()
# A slow stream keeps only the newest few updates: watchers need the current state, not every step.
_QUEUE_SIZE = 8


@dataclass(eq=False)
class Subscription:
    key: Key
    queue: asyncio.Queue[object] = field(default_factory=lambda: asyncio.Queue(_QUEUE_SIZE))
    # Gets the current value at the next poll even when nothing changed.
    needs_current: bool = True

    def put(self, item: object) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(item)


@dataclass(eq=False)
class _KeyState:
    subscribers: set[Subscription] = field(default_factory=set)
    known: bool = False
    version: str | None = None
    info: Update = None
    failing_since: float | None = None


class AliasWatcher:
    def __init__(
        self,
        alias_target: Callable[[str, str], Awaitable[str | None]],
        get_version: Callable[[str, str], Awaitable[ModelVersionInfo]],
        poll_interval_s: float,
    ) -> None:
        self._alias_target = alias_target
        self._get_version = get_version
        self._interval_s = poll_interval_s
        self._keys: dict[Key, _KeyState] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.polls = 0

    @property
    def watched_keys(self) -> list[Key]:
        return list(self._keys)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="alias-watcher")

    async def close(self) -> None:
        """Ends every stream (they return normally) and stops the loop; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for state in self._keys.values():
            for sub in state.subscribers:
                sub.put(_CLOSED)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def watch(self, name: str, alias: str) -> AsyncIterator[Update]:
        """Yields the alias's current version at once, then each new one (None: unset)."""
        if self._closed:
            return
        sub = Subscription((name, alias))
        state = self._keys.setdefault(sub.key, _KeyState())
        state.subscribers.add(sub)
        self._wake.set()
        try:
            while True:
                item = await sub.queue.get()
                if item is _CLOSED:
                    return
                if isinstance(item, DomainError):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            state.subscribers.discard(sub)
            if not state.subscribers and self._keys.get(sub.key) is state:
                del self._keys[sub.key]

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            if self._keys:
                self.polls += 1
                keys = list(self._keys.items())
                await asyncio.gather(*(self._poll(key, state) for key, state in keys))
            if self._keys:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval_s)
            else:
                await self._wake.wait()

    async def _poll(self, key: Key, state: _KeyState) -> None:
        name, alias = key
        try:
            version = await self._alias_target(name, alias)
            changed = not state.known or version != state.version
            info = state.info
            if changed:
                info = await self._get_version(name, version) if version is not None else None
        except NotFound as exc:
            # The model does not exist (yet or any more): to a watcher that is an unset alias,
            # except for a first value, which fails the stream with the reason.
            if not state.known:
                for sub in list(state.subscribers):
                    sub.put(exc)
                    state.subscribers.discard(sub)
                return
            version, info, changed = None, None, state.version is not None
        except DomainError as exc:
            self._failing(key, state, exc)
            return
        except Exception:
            log.exception("polling alias %s@%s failed", name, alias)
            return
        if state.failing_since is not None:
            log.info("alias %s@%s readable again after %.0fs", name, alias, time.monotonic() - state.failing_since)
            state.failing_since = None
        state.known, state.version, state.info = True, version, info
        for sub in list(state.subscribers):
            if changed or sub.needs_current:
                sub.needs_current = False
                sub.put(info)

    def _failing(self, key: Key, state: _KeyState, exc: DomainError) -> None:
        if state.failing_since is None:
            state.failing_since = time.monotonic()
            log.warning("cannot poll alias %s@%s; retrying every %.1fs: %s", *key, self._interval_s, exc)
        else:
            log.debug("alias %s@%s still unreadable: %s", *key, exc)
