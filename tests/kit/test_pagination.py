"""kit.pagination: keyset pages, opaque tokens bound to the request's filters."""

from __future__ import annotations

import pytest

from kit.errors import InvalidArgument
from kit.pagination import MAX_PAGE_SIZE, BadPageToken, page_request, paginate


def _pages(items: list[str], size: int, filters: dict[str, object] | None = None) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        page, token = paginate(items, lambda s: (s,), page_request("ListThings", size, token, filters))
        pages.append(page)
        if not token:
            return pages


def test_every_page_size_yields_each_item_once_in_order() -> None:
    items = [f"item-{i:02d}" for i in (7, 3, 11, 0, 5, 9, 1)]
    for size in range(1, len(items) + 2):
        pages = _pages(items, size)
        assert [x for page in pages for x in page] == sorted(items)
        assert len(pages) == -(-len(items) // size)
    assert _pages([], 3) == [[]]


def test_items_added_or_removed_between_pages_never_shift_a_page() -> None:
    items = ["b", "d", "f", "h"]
    first, token = paginate(items, lambda s: (s,), page_request("ListThings", 2, ""))
    assert first == ["b", "d"]
    # An offset token would now skip "f" (one item removed before it) or repeat "d" (one added).
    changed = ["a", "c", "f", "h"]
    second, token = paginate(changed, lambda s: (s,), page_request("ListThings", 2, token))
    assert second == ["f", "h"] and token == ""


def test_page_size_default_cap_and_negative() -> None:
    assert page_request("ListThings", 0, "").size == 100
    assert page_request("ListThings", 0, "", default_size=7).size == 7
    assert page_request("ListThings", 10**6, "").size == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument, match="page_size must be >= 0"):
        page_request("ListThings", -1, "")


@pytest.mark.parametrize("token", ["garbage", "eyJ2IjoxfQ", "e30", "%%%", "eyJ2Ijo5LCJmIjoiIiwiayI6W119"])
def test_malformed_tokens_are_invalid_argument(token: str) -> None:
    with pytest.raises(BadPageToken, match="malformed") as info:
        page_request("ListThings", 1, token)
    assert isinstance(info.value, InvalidArgument)


def test_a_token_only_fits_its_method_and_filters() -> None:
    _, token = paginate(["a", "b"], lambda s: (s,), page_request("ListThings", 1, "", {"name": "x"}))
    assert token
    assert page_request("ListThings", 1, token, {"name": "x"}).after == ("a",)
    with pytest.raises(BadPageToken, match="other filters"):
        page_request("ListThings", 1, token, {"name": "y"})
    with pytest.raises(BadPageToken, match="other filters"):
        page_request("ListOtherThings", 1, token, {"name": "x"})


def test_descending_integer_keys() -> None:
    versions = ["1", "10", "2", "9"]
    got: list[str] = []
    token = ""
    while True:
        page, token = paginate(versions, lambda v: (-int(v),), page_request("ListVersions", 3, token))
        got += page
        if not token:
            break
    assert got == ["10", "9", "2", "1"]
