"""Exponential back-off for retry loops: a policy (:class:`Backoff`), the delays of one loop
(:class:`Delays`), and a wait that a stop event cuts short (:func:`wait_event`).

Each loop keeps its own :class:`Delays` (no shared state between loops), logs the delay it is about
to wait, and decides itself what it retries and when it gives up: those differ per call site.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delays ``initial_s``, ``initial_s * multiplier``, ... capped at ``max_s``.

    ``jitter`` (0 to 1) scales each capped delay by a random factor in ``[1 - jitter, 1 + jitter]``,
    so a fleet of clients that lost a server at once does not reconnect in lockstep.
    """

    initial_s: float
    max_s: float
    multiplier: float = 2.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_s < 0:
            raise ValueError(f"back-off delays must not be negative (initial {self.initial_s}, max {self.max_s})")
        if self.multiplier < 1:
            raise ValueError(f"back-off multiplier must be at least 1, got {self.multiplier}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"back-off jitter must be in [0, 1), got {self.jitter}")

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay before retry ``attempt`` (0: the first retry); ``rng`` draws the jitter."""
        try:
            grown = self.initial_s * self.multiplier**attempt
        except OverflowError:  # a loop that has retried for days: long since at the cap
            grown = self.max_s
        capped = min(self.max_s, grown)
        if not self.jitter:
            return capped
        return capped * (rng or random.Random()).uniform(1 - self.jitter, 1 + self.jitter)

    def delays(self, rng: random.Random | None = None) -> Delays:
        """A fresh sequence of delays for one loop (``rng``: a seeded one makes the jitter repeatable)."""
        # Seeding a generator costs ~10 us: only for a policy with jitter (loops per frame have none).
        return Delays(self, rng if rng is not None or not self.jitter else random.Random())


class Delays(Iterator[float]):
    """The delays of one retry loop: ``next()`` gives the delay to wait now and moves on;
    :meth:`reset` starts over after a success."""

    def __init__(self, policy: Backoff, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.attempt = 0
        self._rng = rng

    def __next__(self) -> float:
        delay = self.policy.delay_s(self.attempt, self._rng)
        self.attempt += 1
        return delay

    def first(self) -> float:
        """The first delay again, without moving on (a pause after a clean end, not a failure)."""
        return self.policy.delay_s(0, self._rng)

    def reset(self) -> None:
        self.attempt = 0


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Waits up to ``timeout_s`` for ``event``; True when it is set (a stop, a newer update),
    False when the time ran out. Used for back-off pauses that must end early on shutdown."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)
    return event.is_set()
