"""Waiting in tests: retry a check until it holds, never sleep a fixed time and hope.

``eventually(check, what=...)`` calls ``check`` until it returns a truthy value without raising
:class:`AssertionError` (or another exception named in ``retry_on``) and returns that value. An
assertion-style check ends with ``return True``. Any other exception ends the wait at once, so a
check can fail fast (e.g. when the process it waits on has exited). On timeout it raises an
:class:`AssertionError` that says what was awaited, for how long, and how the last try failed
(chained to that try's exception). ``eventually_async`` does the same for checks that return
awaitables, and cuts a check that is still running at the deadline short.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0
# Short: a condition that already holds costs one call, one that takes a while is seen soon after.
DEFAULT_INTERVAL_S = 0.05


class _Tries:
    """What the tries so far saw: the count and the last failure (an exception or a falsy result)."""

    def __init__(self, what: str, timeout_s: float, detail: Callable[[], object] | None) -> None:
        self.what = what
        self.timeout_s = timeout_s
        self.detail = detail
        self.count = 0
        self.error: BaseException | None = None
        self.result: object = None
        self.deadline = time.monotonic() + timeout_s

    def failed(self, error: BaseException | None = None, result: object = None) -> None:
        self.error, self.result = error, result

    def timed_out(self, still_running: bool = False) -> AssertionError:
        if still_running:
            last = "the last try was still running"
        elif self.error is not None:
            last = f"last try raised {type(self.error).__name__}: {self.error}"
        else:
            last = f"last try returned {self.result!r}"
        message = f"waited {self.timeout_s:g} s for {self.what} ({self.count} tries); {last}"
        if self.detail is not None:
            message += f"\n{self.detail()}"
        return AssertionError(message)


def eventually(
    check: Callable[[], T],
    *,
    what: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = DEFAULT_INTERVAL_S,
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
    detail: Callable[[], object] | None = None,
) -> T:
    """``check()``'s first truthy result; ``detail()`` (e.g. a daemon's log) is added to a timeout's message."""
    tries = _Tries(what, timeout_s, detail)
    while True:
        tries.count += 1
        try:
            result = check()
        except retry_on as exc:
            tries.failed(error=exc)
        else:
            if result:
                return result
            tries.failed(result=result)
        if time.monotonic() >= tries.deadline:
            raise tries.timed_out() from tries.error
        time.sleep(interval_s)  # the poll interval between tries of a condition, not a wait in itself


async def eventually_async(
    check: Callable[[], Awaitable[T]] | Callable[[], T],
    *,
    what: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = DEFAULT_INTERVAL_S,
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
    detail: Callable[[], object] | None = None,
) -> T:
    """As :func:`eventually`, awaiting what ``check()`` returns when it is awaitable."""
    tries = _Tries(what, timeout_s, detail)
    while True:
        tries.count += 1
        budget: asyncio.Timeout | None = None
        try:
            outcome = check()
            if inspect.isawaitable(outcome):
                # A try that hangs (a call without its own deadline) must not outlive the wait.
                budget = asyncio.timeout(max(tries.deadline - time.monotonic(), interval_s))
                async with budget:
                    outcome = await outcome
            result: T = outcome  # type: ignore[assignment]
        except TimeoutError as exc:
            if budget is not None and budget.expired():
                raise tries.timed_out(still_running=True) from tries.error
            if not isinstance(exc, retry_on):
                raise
            tries.failed(error=exc)
        except retry_on as exc:
            tries.failed(error=exc)
        else:
            if result:
                return result
            tries.failed(result=result)
        if time.monotonic() >= tries.deadline:
            raise tries.timed_out() from tries.error
        await asyncio.sleep(interval_s)  # the poll interval between tries of a condition, not a wait in itself
