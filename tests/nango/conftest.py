from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.application import create_app
from app.connections import reconcile as reconcile_module
from tests.fakes.nango import FakeNango


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake_nango() -> FakeNango:
    return FakeNango()


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> int:
    """Three connections per page, so a handful of connections spans several pages."""
    monkeypatch.setattr(reconcile_module, "PAGE_SIZE", 3)
    return 3


@pytest.fixture
def make_client(make_settings: Any, fake_nango: FakeNango) -> Iterator[Any]:
    """The app over HTTP, its Nango client wired to the fake through the create_app seam."""
    opened: list[TestClient] = []

    def build(**overrides: Any) -> TestClient:
        values = {"nango_timeout_seconds": 1.0, "nango_max_retries": 2, **overrides}
        app = create_app(make_settings(**values), nango_transport=fake_nango.transport())
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield build
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def api(make_client: Any) -> TestClient:
    client: TestClient = make_client()
    return client
