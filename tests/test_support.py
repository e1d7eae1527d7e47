"""eventually() / eventually_async(): return as soon as a check holds, say what failed on timeout."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support import eventually, eventually_async


class Countdown:
    """A check that fails (assertion or falsy result) until its ``passes_on``-th call."""

    def __init__(self, passes_on: int, style: str = "assert") -> None:
        self.passes_on = passes_on
        self.style = style
        self.calls = 0

    def __call__(self) -> str | bool:
        self.calls += 1
        if self.calls >= self.passes_on:
            return f"ready after {self.calls}"
        if self.style == "assert":
            raise AssertionError(f"not yet at call {self.calls}")
        return False

    async def later(self) -> str | bool:
        return self()


def test_returns_the_first_passing_result_without_waiting_out_the_timeout() -> None:
    check = Countdown(passes_on=3)
    started = time.monotonic()
    assert eventually(check, what="the countdown", timeout_s=30, interval_s=0.01) == "ready after 3"
    assert check.calls == 3 and time.monotonic() - started < 5


def test_a_check_that_holds_at_once_is_called_once() -> None:
    check = Countdown(passes_on=1, style="falsy")
    assert eventually(check, what="the countdown") == "ready after 1"
    assert check.calls == 1


def test_timeout_reports_what_was_awaited_how_long_and_the_last_assertion() -> None:
    check = Countdown(passes_on=10**9)
    with pytest.raises(AssertionError) as failed:
        eventually(check, what="the countdown", timeout_s=0.2, interval_s=0.01, detail=lambda: "daemon log: quiet")
    message = str(failed.value)
    assert message.startswith("waited 0.2 s for the countdown")
    # The last try's own message, not an earlier one.
    assert f"AssertionError: not yet at call {check.calls}" in message
    assert message.endswith("\ndaemon log: quiet")
    assert isinstance(failed.value.__cause__, AssertionError)
    assert str(failed.value.__cause__) == f"not yet at call {check.calls}"


def test_timeout_reports_the_last_falsy_result() -> None:
    with pytest.raises(AssertionError, match=r"waited 0.1 s for an empty list \(\d+ tries\); last try returned \[\]"):
        eventually(list, what="an empty list", timeout_s=0.1, interval_s=0.01)


def test_other_errors_end_the_wait_at_once() -> None:
    calls = []

    def broken() -> bool:
        calls.append(1)
        raise KeyError("gone")

    with pytest.raises(KeyError):
        eventually(broken, what="a broken check", timeout_s=30)
    assert len(calls) == 1
    # ... unless they are named as worth retrying.
    with pytest.raises(AssertionError, match="KeyError: 'gone'"):
        eventually(broken, what="a broken check", timeout_s=0.1, interval_s=0.01, retry_on=(KeyError,))


async def test_async_awaits_coroutine_checks_and_returns_early() -> None:
    check = Countdown(passes_on=3, style="falsy")
    started = time.monotonic()
    assert await eventually_async(check.later, what="the countdown", timeout_s=30, interval_s=0.01) == "ready after 3"
    assert check.calls == 3 and time.monotonic() - started < 5
    plain = Countdown(passes_on=2)
    assert await eventually_async(plain, what="a plain check", interval_s=0.01) == "ready after 2"


async def test_async_timeout_reports_the_last_assertion() -> None:
    check = Countdown(passes_on=10**9)
    with pytest.raises(AssertionError) as failed:
        await eventually_async(check.later, what="the countdown", timeout_s=0.2, interval_s=0.01)
    assert str(failed.value).startswith("waited 0.2 s for the countdown")
    assert f"not yet at call {check.calls}" in str(failed.value)
    assert isinstance(failed.value.__cause__, AssertionError)


async def test_async_cuts_a_hanging_try_short_at_the_deadline() -> None:
    async def hangs() -> bool:
        await asyncio.Event().wait()
        return True

    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"waited 0\.2 s for a hanging call .*the last try was still running"):
        await eventually_async(hangs, what="a hanging call", timeout_s=0.2)
    assert time.monotonic() - started < 5


async def test_async_a_checks_own_timeout_ends_the_wait_like_any_other_error() -> None:
    async def own_timeout() -> bool:
        async with asyncio.timeout(0):
            await asyncio.Event().wait()
        return True

    with pytest.raises(TimeoutError):
        await eventually_async(own_timeout, what="a check with its own timeout", timeout_s=30)
