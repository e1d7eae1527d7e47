"""A database of its own per module for the kill tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.feature_service.support import FreshDatabase, fresh_database


@pytest.fixture(scope="module")
def feature_db(postgres_dsn: str) -> Iterator[FreshDatabase]:
    yield from fresh_database(postgres_dsn, "faults")
