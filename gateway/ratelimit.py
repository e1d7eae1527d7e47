"""Per-caller token buckets: ``burst`` calls at once, then ``rate`` calls per second."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import RateLimited


@dataclass
class TokenBucket:
    rate: float
    burst: int
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Takes one token; returns 0 when granted, else the seconds until one is available."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per caller name; the names come from the configured keys, so the map is bounded."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, caller: str) -> None:
        """Raises :class:`RateLimited` (with a RetryInfo delay) when ``caller`` has no token left."""
        if not self.enabled:
            return
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = TokenBucket(self.rate, self.burst, float(self.burst), now)
        wait_s = bucket.take(now)
        if wait_s > 0:
            raise RateLimited(
                f"rate limit exceeded for API key {caller!r} ({self.rate:g} calls/s, burst {self.burst}); "
                f"retry in {wait_s:.2f}s",
                retry_after_s=wait_s,
                caller=caller,
                rate_per_s=self.rate,
                burst=self.burst,
            )
