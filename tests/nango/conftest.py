from __future__ import annotations

import pytest

from app.connections import reconcile as reconcile_module
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
