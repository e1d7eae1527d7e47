"""One shared poll loop that watches MLflow aliases for every WatchAlias stream.

Streams subscribe to a (model, alias) key. The loop reads each watched *model* once per interval
(one MLflow call returns all of its aliases) and fans changes out to the subscribers' queues, so
any number of streams on any number of aliases of one model cost one MLflow call per interval.
A key nobody watches is dropped, and a model without watched keys is no longer polled.

Limits (issue 16, hole 6): a watch on a model MLflow does not know is refused with NOT_FOUND
before it subscribes (random names cost no polls); at most ``max_streams`` streams and
``max_aliases`` distinct (model, alias) keys are watched at once, beyond which a watch is
refused with RESOURCE_EXHAUSTED and a RetryInfo hint.

While MLflow is unreachable the loop logs and keeps retrying; streams stay open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from kit.errors import DomainError, NotFound, ResourceExhausted
from registry_gateway.schema import ModelVersionInfo

log = logging.getLogger(__name__)

Key = tuple[str, str]
# None: the alias is not set. A closed watcher sends _CLOSED to end the streams.
Update = ModelVersionInfo | None
_CLOSED = object()
# A slow stream keeps only the newest few updates: watchers need the current state, not every step.
_QUEUE_SIZE = 8
# When a full watcher is worth asking again: streams come and go on the scale of seconds.
RETRY_AFTER_S = 5.0


class WatchesExhausted(ResourceExhausted):
    """The registry watches as many streams or aliases as it is configured to."""

    reason = "TOO_MANY_WATCHES"


@dataclass(frozen=True)
class WatchLimits:
    max_streams: int = 1000
    max_aliases: int = 256


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
class _AliasState:
    subscribers: set[Subscription] = field(default_factory=set)
    known: bool = False
    version: str | None = None
    info: Update = None


@dataclass(eq=False)
class _ModelState:
    aliases: dict[str, _AliasState] = field(default_factory=dict)
    failing_since: float | None = None


class AliasWatcher:
    def __init__(
        self,
        model_aliases: Callable[[str], Awaitable[dict[str, str]]],
        get_version: Callable[[str, str], Awaitable[ModelVersionInfo]],
        poll_interval_s: float,
        limits: WatchLimits | None = None,
        on_poll: Callable[[], None] | None = None,
    ) -> None:
        self._model_aliases = model_aliases
        self._get_version = get_version
        self._interval_s = poll_interval_s
        self._limits = limits or WatchLimits()
        self._on_poll = on_poll
        self._models: dict[str, _ModelState] = {}
        self._streams = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.polls = 0

    @property
    def watched_keys(self) -> list[Key]:
        return [(name, alias) for name, model in self._models.items() for alias in model.aliases]

    @property
    def stream_count(self) -> int:
        return self._streams

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="alias-watcher")

    async def close(self) -> None:
        """Ends every stream (they return normally) and stops the loop; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for model in self._models.values():
            for state in model.aliases.values():
                for sub in state.subscribers:
                    sub.put(_CLOSED)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _check_room(self, name: str, alias: str) -> None:
        limits = self._limits
        if self._streams >= limits.max_streams:
            raise WatchesExhausted(
                f"the registry already serves {self._streams} WatchAlias streams, its limit "
                f"(watch_max_streams); retry in {RETRY_AFTER_S:g}s",
                retry_after_s=RETRY_AFTER_S,
                metadata={"limit": "watch_max_streams", "max": limits.max_streams},
            )
        model = self._models.get(name)
        if model is None or alias not in model.aliases:
            watched = sum(len(m.aliases) for m in self._models.values())
            if watched >= limits.max_aliases:
                raise WatchesExhausted(
                    f"the registry already watches {watched} (model, alias) pairs, its limit "
                    f"(watch_max_aliases); watch an alias someone watches already, or retry in {RETRY_AFTER_S:g}s",
                    retry_after_s=RETRY_AFTER_S,
                    metadata={"limit": "watch_max_aliases", "max": limits.max_aliases},
                )

    async def _check_model(self, name: str) -> None:
        """Refuses a model MLflow does not know before anything is polled for it. When MLflow does
        not answer, the watch goes on: the loop retries, and its first answer decides."""
        try:
            await self._model_aliases(name)
        except NotFound:
            raise
        except DomainError as exc:
            log.debug("cannot check model %s before watching it: %s", name, exc)

    async def watch(self, name: str, alias: str) -> AsyncIterator[Update]:
        """Yields the alias's current version at once, then each new one (None: unset)."""
        if self._closed:
            return
        self._check_room(name, alias)
        if name not in self._models:
            await self._check_model(name)
            if self._closed:
                return
            self._check_room(name, alias)  # others may have taken the room while MLflow answered
        sub = Subscription((name, alias))
        model = self._models.setdefault(name, _ModelState())
        state = model.aliases.setdefault(alias, _AliasState())
        state.subscribers.add(sub)
        self._streams += 1
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
            self._streams -= 1
            state.subscribers.discard(sub)
            if not state.subscribers and model.aliases.get(alias) is state:
                del model.aliases[alias]
            if not model.aliases and self._models.get(name) is model:
                del self._models[name]

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            if self._models:
                self.polls += 1
                if self._on_poll is not None:
                    self._on_poll()
                models = list(self._models.items())
                await asyncio.gather(*(self._poll(name, model) for name, model in models))
            if self._models:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval_s)
            else:
                await self._wake.wait()

    async def _poll(self, name: str, model: _ModelState) -> None:
        gone: NotFound | None = None
        aliases: dict[str, str] = {}
        try:
            aliases = await self._model_aliases(name)
        except NotFound as exc:
            gone = exc
        except DomainError as exc:
            self._failing(name, model, exc)
            return
        except Exception:
            log.exception("polling the aliases of %s failed", name)
            return
        infos: dict[str, ModelVersionInfo] = {}  # this round's versions, shared by aliases on one
        for alias, state in list(model.aliases.items()):
            missing = gone
            version = None if gone else aliases.get(alias)
            info = state.info if state.known and version == state.version else None
            try:
                if info is None and version is not None:
                    if version not in infos:
                        infos[version] = await self._get_version(name, version)
                    info = infos[version]
            except NotFound as exc:
                missing, version, info = exc, None, None
            except DomainError as exc:
                self._failing(name, model, exc)
                return
            except Exception:
                log.exception("reading %s version %s failed", name, version)
                return
            if missing is not None and not state.known:
                # The model does not exist (any more): to a watcher that is an unset alias, except
                # for a first value, which fails the stream with the reason.
                for sub in list(state.subscribers):
                    sub.put(missing)
                    state.subscribers.discard(sub)
                continue
            self._publish(state, version, info, changed=not state.known or version != state.version)
        if model.failing_since is not None:
            log.info("model %s readable again after %.0fs", name, time.monotonic() - model.failing_since)
            model.failing_since = None

    @staticmethod
    def _publish(state: _AliasState, version: str | None, info: Update, changed: bool) -> None:
        state.known, state.version, state.info = True, version, info
        for sub in list(state.subscribers):
            if changed or sub.needs_current:
                sub.needs_current = False
                sub.put(info)

    def _failing(self, name: str, model: _ModelState, exc: DomainError) -> None:
        if model.failing_since is None:
            model.failing_since = time.monotonic()
            log.warning("cannot poll the aliases of %s; retrying every %.1fs: %s", name, self._interval_s, exc)
        else:
            log.debug("aliases of %s still unreadable: %s", name, exc)
