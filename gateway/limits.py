"""Limits against exhaustion (docs/security.md, section 6): concurrent calls and streams per API
key, pacing of client-stream messages per key, and back-off of peers that fail authentication.

The maps here are keyed by key name (bounded by the configured keys) or by peer address
(bounded by ``max_peers``, oldest forgotten first).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from gateway.errors import TooManyConcurrentCalls, TooManyConcurrentStreams, TooManyFailedAuthentications
from gateway.ratelimit import TokenBucket

# When a caller at its concurrency cap is worth trying again: calls end on the scale of a second.
CONCURRENCY_RETRY_AFTER_S = 1.0


class Concurrency:
    """In-flight calls per key name, and how many of them stream (0 disables a cap)."""

    def __init__(self, max_calls: int, max_streams: int) -> None:
        self.max_calls = max_calls
        self.max_streams = max_streams
        self._calls: dict[str, int] = {}
        self._streams: dict[str, int] = {}

    def acquire(self, caller: str, streaming: bool) -> Callable[[], None]:
        """Counts a call in, or raises RESOURCE_EXHAUSTED; returns its (idempotent) release."""
        calls = self._calls.get(caller, 0)
        if self.max_calls and calls >= self.max_calls:
            raise TooManyConcurrentCalls(
                f"API key {caller!r} has {calls} calls in flight, the most allowed (max_concurrent_calls_per_key); "
                f"retry when one ends",
                retry_after_s=CONCURRENCY_RETRY_AFTER_S,
                metadata={"api_key": caller, "max": self.max_calls},
            )
        streams = self._streams.get(caller, 0)
        if streaming and self.max_streams and streams >= self.max_streams:
            raise TooManyConcurrentStreams(
                f"API key {caller!r} has {streams} streams open, the most allowed (max_streams_per_key); "
                f"retry when one ends",
                retry_after_s=CONCURRENCY_RETRY_AFTER_S,
                metadata={"api_key": caller, "max": self.max_streams},
            )
        self._calls[caller] = calls + 1
        if streaming:
            self._streams[caller] = streams + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            _decrement(self._calls, caller)
            if streaming:
                _decrement(self._streams, caller)

        return release

    def in_flight(self, caller: str) -> tuple[int, int]:
        return self._calls.get(caller, 0), self._streams.get(caller, 0)


def _decrement(counts: dict[str, int], caller: str) -> None:
    left = counts.get(caller, 0) - 1
    if left > 0:
        counts[caller] = left
    else:
        counts.pop(caller, None)


class MessagePacer:
    """Client-stream messages per key: ``burst`` at once, then ``rate_per_s``. A stream over the rate
    is slowed down (the gateway reads its next message later, so HTTP/2 flow control pushes back on
    the client), not failed: a fast uploader is legitimate, it just may not flood the daemons."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    async def pace(self, caller: str) -> None:
        if self.rate_per_s <= 0:
            return
        bucket = self._buckets.get(caller)
        if bucket is None:
            now = self._clock()
            bucket = self._buckets[caller] = TokenBucket(self.rate_per_s, self.burst, float(self.burst), now)
        while (wait_s := bucket.take(self._clock())) > 0:
            await asyncio.sleep(wait_s)

    async def paced(self, caller: str, messages: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for message in messages:
            await self.pace(caller)
            yield message


def peer_host(peer: str) -> str:
    """The part of a gRPC peer string (``ipv4:1.2.3.4:5678``, ``ipv6:[::1]:5678``) that names the
    caller's machine: the IPv4 address, or the IPv6 /64 (one host can hold a whole /64)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition(":")[0].strip("[]") or rest
        try:
            return str(ipaddress.IPv6Network(f"{host.split('%')[0]}/64", strict=False))
        except ValueError:
            return host
    return kind  # unix sockets and others: one local peer


@dataclass
class _Peer:
    failures: int = 0
    last_s: float = 0.0  # the latest failure, or the end of the latest block if later
    blocked_until_s: float = 0.0


class AuthBackoff:
    """Per-peer back-off after failed authentications: from the ``max_failures``-th failure on
    (failures count while they are less than ``window_s`` apart, a block's end included), each
    failure blocks the peer for ``base_s`` doubled per failure beyond the threshold, at most
    ``max_s``. A blocked peer's calls are refused before any key is looked at, and do not count."""

    def __init__(
        self,
        max_failures: int,
        window_s: float,
        base_s: float,
        max_s: float,
        max_peers: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.base_s = base_s
        self.max_s = max_s
        self._max_peers = max_peers
        self._clock = clock
        self._peers: dict[str, _Peer] = {}

    @property
    def enabled(self) -> bool:
        return self.max_failures > 0

    def _current(self, host: str, now: float) -> _Peer | None:
        record = self._peers.get(host)
        if record is not None and now - record.last_s > self.window_s:
            del self._peers[host]
            return None
        return record

    def check(self, host: str) -> None:
        """Raises RESOURCE_EXHAUSTED with the time left when ``host`` is blocked."""
        if not self.enabled:
            return
        now = self._clock()
        record = self._current(host, now)
        if record is not None and now < record.blocked_until_s:
            wait_s = record.blocked_until_s - now
            raise TooManyFailedAuthentications(
                f"too many failed authentications from this address ({record.failures}); retry in {wait_s:.1f}s",
                retry_after_s=wait_s,
                metadata={"failures": record.failures},
            )

    def failed(self, host: str) -> None:
        if not self.enabled:
            return
        now = self._clock()
        record = self._current(host, now)
        if record is None:
            self._make_room(now)
            record = self._peers[host] = _Peer()
        record.failures += 1
        record.last_s = now
        beyond = record.failures - self.max_failures
        if beyond >= 0:
            record.blocked_until_s = now + min(self.max_s, self.base_s * 2.0 ** min(beyond, 64))
            record.last_s = record.blocked_until_s

    def _make_room(self, now: float) -> None:
        if len(self._peers) < self._max_peers:
            return
        for host in [h for h, r in self._peers.items() if now - r.last_s > self.window_s]:
            del self._peers[host]
        while len(self._peers) >= self._max_peers:
            del self._peers[next(iter(self._peers))]  # the longest-known peer
