"""The console over HTTP: an app with the console on, signed in, wired to the fake Nango."""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests import secret_scan
from tests.webhooks.helpers import auth_body, signed_headers

CONSOLE_USER = "operator"
CONSOLE_PASSWORD = "console-password-0123456789abcdef"
secret_scan.register_secret(CONSOLE_PASSWORD)

_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def make_console(make_client: Any) -> Any:
    """A signed-in client of an app with the console on; keyword arguments are settings."""

    def build(**overrides: Any) -> TestClient:
        values = {"console_username": CONSOLE_USER, "console_password": CONSOLE_PASSWORD}
        client: TestClient = make_client(**{**values, **overrides})
        client.auth = (CONSOLE_USER, CONSOLE_PASSWORD)
        return client

    return build


@pytest.fixture
def console(make_console: Any) -> TestClient:
    client: TestClient = make_console()
    return client


def csrf_token(client: TestClient, page: str = "/console/api-keys") -> str:
    """A token as a signed-in browser gets it: from a page's form."""
    response = client.get(page)
    assert response.status_code == 200, response.text
    match = _TOKEN.search(response.text)
    assert match is not None, "the page has no form with a CSRF token"
    return match.group(1)


def post_form(
    client: TestClient, path: str, data: dict[str, str] | None = None, *, token: str | None = None
) -> Any:
    """A console form posted with a valid token (unless ``token`` is given)."""
    fields = {"csrf_token": token if token is not None else csrf_token(client), **(data or {})}
    return client.post(path, data=fields, follow_redirects=False)


def deliver(client: TestClient, **fields: Any) -> Any:
    """A signed auth webhook, as Nango sends it (``auth_body``'s fields)."""
    body = auth_body(**fields)
    response = client.post("/webhooks/nango", content=body, headers=signed_headers(body))
    assert response.status_code == 200, response.text
    return response.json()


def fresh_overview(client: TestClient) -> Any:
    """The overview with figures computed now (the app computed them once at start-up, and
    would show those for ``CONSOLE_CACHE_SECONDS``)."""
    state = client.app.state.registry  # type: ignore[attr-defined]
    if state.console_figures is not None:
        state.console_figures.figures = None
    return client.get("/console/")
