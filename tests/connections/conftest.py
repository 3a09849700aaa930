from __future__ import annotations

import pytest

from app.connections import reconcile as reconcile_module


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> int:
    """Three connections per page, so a handful of connections spans several pages."""
    monkeypatch.setattr(reconcile_module, "PAGE_SIZE", 3)
    return 3
