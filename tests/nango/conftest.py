from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Engine

from app.connections import reconcile as reconcile_module
from app.db.database import Database, connected
from app.settings import Settings
from tests import secret_scan
from tests.fakes.nango import CREDENTIAL_MARKER

# Every credential the fake Nango hands out starts with the marker: none may reach a log line.
secret_scan.register_secret(CREDENTIAL_MARKER)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> int:
    """Three connections per page, so a handful of connections spans several pages."""
    monkeypatch.setattr(reconcile_module, "PAGE_SIZE", 3)
    return 3


@pytest.fixture
async def database(settings: Settings, sync_engine: Engine) -> AsyncIterator[Database]:
    """The service's own data layer on the test database (for calling reconcile directly)."""
    async with connected(settings) as database:
        yield database
