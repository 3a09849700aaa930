from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Engine

from app.db.database import Database, connected
from app.settings import Settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def database(settings: Settings, sync_engine: Engine) -> AsyncIterator[Database]:
    """The service's own data layer on the test database."""
    async with connected(settings) as database:
        yield database
