"""AIP-158 pagination for every List RPC: page sizes and opaque page tokens.

A page token is keyset, not offset: it holds the sort key of the last item sent, so the
next page starts after it and items added or removed meanwhile never shift a page (nothing
is skipped or repeated). It also holds a hash of the request's filter fields and the method,
so a token cannot be replayed with other filters. Tokens are urlsafe base64 of a small JSON
document; clients must treat them as opaque (the layout may change with any release).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kit.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_TOKEN_VERSION = 1

# A sort key: strings and integers only, so it survives JSON exactly.
SortKey = tuple[str | int, ...]
T = TypeVar("T")


class BadPageToken(InvalidArgument):
    """A page token that is malformed or belongs to another request."""


@dataclass(frozen=True)
class PageRequest:
    """What one List call asks for: ``size`` items after the item whose key is ``after``."""

    size: int
    after: SortKey | None
    filters_hash: str


def _filters_hash(method: str, filters: Mapping[str, object]) -> str:
    text = json.dumps({"method": method, "filters": filters}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def page_request(
    method: str,
    page_size: int,
    page_token: str,
    filters: Mapping[str, object] | None = None,
    *,
    default_size: int = DEFAULT_PAGE_SIZE,
    max_size: int = MAX_PAGE_SIZE,
) -> PageRequest:
    """Validates a request's page_size and page_token; ``filters`` are the request's other fields."""
    if page_size < 0:
        raise InvalidArgument(f"page_size must be >= 0 (0: the server default of {default_size}), got {page_size}")
    size = min(page_size or default_size, max_size)
    expected = _filters_hash(method, filters or {})
    if not page_token:
        return PageRequest(size, None, expected)
    try:
        padded = page_token + "=" * (-len(page_token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        version, filters_hash, after = body["v"], body["f"], body["k"]
        if version != _TOKEN_VERSION or not isinstance(filters_hash, str) or not isinstance(after, list):
            raise ValueError("unknown token layout")
        if not all(isinstance(part, str | int) and not isinstance(part, bool) for part in after):
            raise ValueError("bad sort key")
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error) as exc:
        raise BadPageToken(
            f"page_token {page_token[:40]!r} is malformed; pass the next_page_token of the previous "
            "response unchanged, or an empty page_token for the first page"
        ) from exc
    if filters_hash != expected:
        named = ", ".join(sorted(filters or {})) or "none"
        raise BadPageToken(
            f"page_token was issued for a {method} request with other filters (filter fields: {named}); "
            "repeat the first page's filters with it, or send an empty page_token to start over"
        )
    return PageRequest(size, tuple(after), expected)


def next_page_token(request: PageRequest, last_key: SortKey) -> str:
    """The token for the page after the item whose sort key is ``last_key``."""
    body = json.dumps({"v": _TOKEN_VERSION, "f": request.filters_hash, "k": list(last_key)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode("ascii").rstrip("=")


def paginate(items: Sequence[T], key: Callable[[T], SortKey], request: PageRequest) -> tuple[list[T], str]:
    """One page of ``items`` (any order) in ascending ``key`` order, and the next page's token.

    ``key`` must be unique per item; a key that sorts descending negates its integers."""
    ordered = sorted(items, key=key)
    after = request.after
    remaining = [item for item in ordered if after is None or _after(key(item), after)]
    page = remaining[: request.size]
    more = len(remaining) > request.size
    return page, next_page_token(request, key(page[-1])) if more and page else ""


def _after(candidate: SortKey, after: SortKey) -> bool:
    # A token from another method's key shape compares unequal instead of raising.
    try:
        return candidate > after
    except TypeError as exc:
        raise BadPageToken("page_token does not fit this list; send an empty page_token to start over") from exc
