"""CLI end-to-end fixtures: the same API keys file as the gateway tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gateway.support import keys_file_text


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "api-keys.txt"
    path.write_text(keys_file_text())
    return path
