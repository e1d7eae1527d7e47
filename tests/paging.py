"""Checks every List RPC's AIP-158 pagination the same way: each page size from 1 past the
number of items yields every item exactly once, in the order of one big page; a bad token,
a token replayed with other filters and a negative page size are INVALID_ARGUMENT."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

AsyncCall = Callable[[Any], Awaitable[Any]]


async def collect_pages(call: AsyncCall, request: Message, field: str, page_size: int) -> tuple[list[Any], int]:
    """Every item through pages of ``page_size``, and how many calls that took."""
    request = _copy(request)
    request.page_size, request.page_token = page_size, ""  # type: ignore[attr-defined]
    found: list[Any] = []
    calls = 0
    while True:
        reply = await call(request)
        calls += 1
        items = list(getattr(reply, field))
        assert len(items) <= page_size, f"a page of {page_size} held {len(items)} items"
        found += items
        if not reply.next_page_token:
            return found, calls
        assert items, "only the last page may be empty"
        assert calls <= 10_000, "the pages never end"
        request.page_token = reply.next_page_token  # type: ignore[attr-defined]


async def assert_pages_cover(
    call: AsyncCall, request: Message, field: str, key: Callable[[Any], Hashable], at_least: int = 1
) -> list[Any]:
    """Pages of every size from 1 to n+1 give the n items of one big page, each once, in order."""
    whole, _ = await collect_pages(call, request, field, 1000)
    keys = [key(item) for item in whole]
    assert len(keys) >= at_least, f"expected at least {at_least} items to page through, got {len(keys)}"
    assert len(set(keys)) == len(keys), f"one page repeats items: {keys}"
    for size in range(1, len(keys) + 2):
        paged, calls = await collect_pages(call, request, field, size)
        assert [key(item) for item in paged] == keys, f"page size {size}"
        # The last page says it is the last: no extra call for an empty page.
        assert calls == max(1, -(-len(keys) // size)), f"page size {size}: {calls} calls"
    return whole


async def assert_bad_pages_refused(call: AsyncCall, request: Message, other_filters: Message | None = None) -> None:
    """Malformed tokens, tokens sent with other filters and negative sizes: INVALID_ARGUMENT."""
    bad: list[tuple[Message, str]] = []
    for token in ("not a token", "eyJ2IjoxfQ", "%%%"):
        bad.append((_with(request, page_token=token, page_size=1), "malformed"))
    bad.append((_with(request, page_size=-1), "page_size"))
    if other_filters is not None:
        first = await call(_with(request, page_size=1))
        assert first.next_page_token, "the filter check needs a request with more than one item"
        bad.append((_with(other_filters, page_token=first.next_page_token, page_size=1), "filters"))
    for message, words in bad:
        with pytest.raises(grpc.RpcError) as info:
            await call(message)
        error: Any = info.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert words in error.details(), error.details()


def _copy(request: Message) -> Any:
    copy = type(request)()
    copy.CopyFrom(request)
    return copy


def _with(request: Message, **fields: object) -> Message:
    copy = _copy(request)
    for name, value in fields.items():
        setattr(copy, name, value)
    return copy  # type: ignore[no-any-return]
