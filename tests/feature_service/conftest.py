"""Fixtures shared by the feature service tests: real apollo-cars frames, a database per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.feature_service.support import ApolloFrame, FreshDatabase, fresh_database, load_apollo


@pytest.fixture(scope="module")
def apollo(shared_dir: Path) -> list[ApolloFrame]:
    frames = load_apollo(shared_dir)
    assert len(frames) == 148, "apollo-cars should hold 98 train + 50 val frames"
    return frames


@pytest.fixture(scope="module")
def feature_db(postgres_dsn: str) -> Iterator[FreshDatabase]:
    yield from fresh_database(postgres_dsn, "feature")
