from __future__ import annotations

import pytest

from tests.fakes.nango import FakeNango


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake_nango() -> FakeNango:
    return FakeNango()
