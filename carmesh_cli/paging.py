"""List commands and AIP-158 pages: every page by default, or one page with --page-size/--page-token.

One page prints its items as usual and the next page's token on stderr, so stdout stays a
table or JSON lines that scripts can read."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TextIO, TypeVar

from carmesh_cli import argtypes

# Items per call when fetching every page: the servers' most.
FETCH_ALL_PAGE_SIZE = 1000


class PagedRequest(Protocol):
    page_size: int
    page_token: str


class PagedResponse(Protocol):
    @property
    def next_page_token(self) -> str: ...


Req = TypeVar("Req", bound=PagedRequest)
Resp = TypeVar("Resp", bound=PagedResponse)
Item = TypeVar("Item")


@dataclass(frozen=True)
class Paging:
    """0 and "": every page; otherwise one page of at most ``size`` items after ``token``."""

    size: int = 0
    token: str = ""

    @property
    def one_page(self) -> bool:
        return bool(self.size or self.token)

    @classmethod
    def of(cls, args: argparse.Namespace) -> Paging:
        return cls(getattr(args, "page_size", 0), getattr(args, "page_token", ""))


EVERY_PAGE = Paging()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--page-size",
        type=argtypes.count,
        default=0,
        metavar="N",
        help="show one page of at most N items and print the next page's token on stderr "
        "(default: every page; 0: the server's default page size with --page-token)",
    )
    parser.add_argument(
        "--page-token",
        default="",
        metavar="TOKEN",
        help="show the page after the one that printed TOKEN (same filters as that call)",
    )


def fetch(
    call: Callable[[Req], Resp],
    request: Req,
    items: Callable[[Resp], Sequence[Item]],
    paging: Paging,
    stderr: TextIO,
) -> list[Item]:
    """The items of every page, or of the one page ``paging`` names (its next token to stderr)."""
    if paging.one_page:
        request.page_size, request.page_token = paging.size, paging.token
        reply = call(request)
        if reply.next_page_token:
            print(f"next page: --page-token {reply.next_page_token}", file=stderr)
        return list(items(reply))
    request.page_size, request.page_token = FETCH_ALL_PAGE_SIZE, ""
    found: list[Item] = []
    while True:
        reply = call(request)
        found += items(reply)
        if not reply.next_page_token:
            return found
        request.page_token = reply.next_page_token
