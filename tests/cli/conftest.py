"""Fixtures for the CLI tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from sqlalchemy import Engine


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, database_url: str, sync_engine: Engine, tmp_path: Path
) -> Iterator[None]:
    """The CLI reads its settings from the environment, like in production."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DATABASE_URL", database_url)
    # Info, as the suite logs: structlog keeps a logger at the level it was first used with.
    monkeypatch.setenv("LOG_LEVEL", "info")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved_structlog = structlog.get_config()
    yield
    # The CLI configures logging onto this test's captured output; later tests must not
    # inherit it.
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**saved_structlog)
