"""The delays of the shared back-off, checked as numbers: nothing here sleeps."""

from __future__ import annotations

import asyncio
import random

import pytest

from kit.backoff import Backoff, wait_event


def test_delays_double_up_to_the_cap() -> None:
    delays = Backoff(0.25, 5.0).delays()
    assert [next(delays) for _ in range(8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert delays.attempt == 8


def test_reset_starts_over_and_first_does_not_move_on() -> None:
    delays = Backoff(0.5, 15.0).delays()
    assert [next(delays) for _ in range(3)] == [0.5, 1.0, 2.0]
    assert delays.first() == 0.5
    assert next(delays) == 4.0
    delays.reset()
    assert next(delays) == 0.5


def test_a_cap_below_the_first_delay_caps_it_too() -> None:
    delays = Backoff(0.05, 0.01).delays()
    assert [next(delays) for _ in range(3)] == [0.01, 0.01, 0.01]


def test_other_multipliers() -> None:
    assert [Backoff(1.0, 100.0, multiplier=3.0).delay_s(n) for n in range(6)] == [1, 3, 9, 27, 81, 100]
    assert [Backoff(2.0, 100.0, multiplier=1.0).delay_s(n) for n in (0, 1, 50)] == [2.0, 2.0, 2.0]


def test_a_loop_retrying_for_ever_stays_at_the_cap() -> None:
    policy = Backoff(0.5, 15.0)
    assert policy.delay_s(10_000) == 15.0  # 2.0 ** 10000 overflows a float


def test_jitter_stays_within_its_band_around_the_capped_delay() -> None:
    policy = Backoff(0.5, 15.0, jitter=0.2)
    delays = policy.delays(random.Random(7))
    seen = [next(delays) for _ in range(200)]
    bases = [min(15.0, 0.5 * 2**n) for n in range(200)]
    assert all(0.8 * b <= d <= 1.2 * b for d, b in zip(seen, bases, strict=True))
    # Really random: not all at the centre, and the cap itself is jittered (a fleet spreads out).
    assert len({round(d / b, 6) for d, b in zip(seen, bases, strict=True)}) > 100
    assert max(seen) > 15.0


def test_jitter_is_repeatable_with_a_seeded_generator() -> None:
    policy = Backoff(1.0, 8.0, jitter=0.5)
    first = [policy.delay_s(n, random.Random(3)) for n in range(5)]
    again = [policy.delay_s(n, random.Random(3)) for n in range(5)]
    assert first == again


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": -1.0, "max_s": 1.0},
        {"initial_s": 1.0, "max_s": -1.0},
        {"initial_s": 1.0, "max_s": 2.0, "multiplier": 0.5},
        {"initial_s": 1.0, "max_s": 2.0, "jitter": 1.0},
        {"initial_s": 1.0, "max_s": 2.0, "jitter": -0.1},
    ],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


async def test_wait_event_returns_at_once_when_the_event_is_set() -> None:
    event = asyncio.Event()
    event.set()
    # An hour-long pause would hang the test: it must end at once.
    assert await asyncio.wait_for(wait_event(event, 3600.0), 5.0) is True


async def test_wait_event_ends_when_the_event_is_set_during_the_wait() -> None:
    event = asyncio.Event()
    waiting = asyncio.create_task(wait_event(event, 3600.0))
    await asyncio.sleep(0)  # one turn of the loop, so the event is set while the wait is under way
    assert not waiting.done()
    event.set()
    assert await asyncio.wait_for(waiting, 5.0) is True


async def test_wait_event_times_out_as_false() -> None:
    assert await wait_event(asyncio.Event(), 0.0) is False
