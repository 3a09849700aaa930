"""The console in a real browser: Debian's chromium, headless, driven by Playwright.

The app runs in uvicorn on a loopback port (its Nango client wired to the fake Nango); the
browser signs in with Basic Auth and does what an operator does: search a user, read a
connection's timeline, replay a failed delivery, reconcile, create and revoke an API key. Every
page is photographed at 1280 px and at a 390 px phone width under ``build/console/``.

Without chromium (or Playwright) the tests are skipped with a loud message; under ``CI=true``
that is a failure. ``make test`` installs chromium with apt-get when run as root.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from sqlalchemy import Engine, text

from app.api.keys import REFRESH_SECONDS
from app.application import create_app
from tests.console.conftest import CONSOLE_PASSWORD, CONSOLE_USER
from tests.fakes.nango import FakeNango
from tests.net import free_port
from tests.webhooks.helpers import auth_body, signed_headers

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "console"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# The elements that stick out of a phone's screen (outside the scrolling table wrappers).
WIDER_THAN_THE_SCREEN = """
[...document.querySelectorAll("body *")]
  .filter(e => !e.closest(".table-wrap") && e.getBoundingClientRect().right > 391)
  .map(e => e.tagName + "." + e.className + " " + Math.round(e.getBoundingClientRect().right))
  .slice(0, 5)
"""
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _unavailable(reason: str) -> None:
    banner = "\n" + "!" * 78 + "\n"
    message = f"{banner}BROWSER TESTS NOT RUN: {reason}{banner}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "CI=true: a missing browser is a failure.", pytrace=False)
    # Past pytest's capture, so the skip is seen in any run's output, not only with -rs.
    if sys.__stderr__ is not None:
        sys.__stderr__.write(message)
    pytest.skip(f"BROWSER TESTS NOT RUN: {reason} (make test installs chromium as root)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        _unavailable(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover (a dev dependency)
        _unavailable("Playwright for Python is not installed (make dev)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class _Server:
    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                pytest.fail("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture
def server(make_settings: Any, fake_nango: FakeNango) -> Iterator[_Server]:
    settings = make_settings(
        console_username=CONSOLE_USER,
        console_password=CONSOLE_PASSWORD,
        nango_timeout_seconds=2.0,
        console_cache_seconds=0,
    )
    with _Server(create_app(settings, nango_transport=fake_nango.transport())) as running:
        yield running


def _deliver(base_url: str, **fields: Any) -> int:
    body = auth_body(**fields)
    response = httpx2.post(f"{base_url}/webhooks/nango", content=body, headers=signed_headers(body))
    assert response.status_code == 200, response.text
    return int(response.json()["delivery_id"])


def _shoot(page: Any, name: str) -> None:
    """The page at desktop width, then at phone width (full length), back to desktop."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=str(SCREENSHOTS / f"{name}-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(SCREENSHOTS / f"{name}-phone.png"), full_page=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    wide = page.evaluate(WIDER_THAN_THE_SCREEN) if width > PHONE["width"] else []
    assert width <= PHONE["width"], f"{name} scrolls sideways at 390 px ({width} px): {wide}"
    page.set_viewport_size(DESKTOP)


def _arrange(base_url: str, fake_nango: FakeNango, sync_engine: Engine) -> int:
    """A user with a history, a failed delivery, and connections only Nango knows."""
    _deliver(
        base_url,
        connection_id="conn-salesforce",
        integration="salesforce",
        tags={"end_user_id": "user-42", "organization_id": "acme"},
    )
    _deliver(
        base_url,
        connection_id="conn-salesforce",
        integration="salesforce",
        operation="refresh",
        success=False,
    )
    _deliver(base_url, connection_id="conn-github", tags={"end_user_id": "user-7"})
    failed = _deliver(
        base_url, connection_id="conn-notion", integration="notion", tags={"end_user_id": "user-42"}
    )
    with sync_engine.begin() as conn:
        # As if applying it had failed (the database was down): stored, not applied.
        conn.execute(text("DELETE FROM connection_events WHERE delivery_id = :id"), {"id": failed})
        conn.execute(
            text(
                "DELETE FROM connection_tags WHERE connection_pk IN"
                " (SELECT id FROM connections WHERE connection_id = 'conn-notion')"
            )
        )
        conn.execute(text("DELETE FROM connections WHERE connection_id = 'conn-notion'"))
        conn.execute(
            text(
                "UPDATE deliveries SET outcome = 'failed', error = 'OperationalError'"
                " WHERE id = :id"
            ),
            {"id": failed},
        )
    for index in range(3):
        fake_nango.add_connection(
            connection_id=f"only-at-nango-{index}", tags={"end_user_id": f"user-{100 + index}"}
        )
    fake_nango.add_connection(
        connection_id="conn-salesforce",
        integration_id="salesforce",
        tags={"end_user_id": "user-42", "organization_id": "acme"},
        errors=["auth"],
    )
    fake_nango.add_connection(connection_id="conn-github", tags={"end_user_id": "user-7"})
    return failed


def test_an_operator_session(
    browser: Any, server: _Server, fake_nango: FakeNango, sync_engine: Engine
) -> None:
    failed = _arrange(server.base_url, fake_nango, sync_engine)
    context = browser.new_context(
        http_credentials={"username": CONSOLE_USER, "password": CONSOLE_PASSWORD},
        viewport=DESKTOP,
    )
    page = context.new_page()
    errors: list[str] = []
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    base = server.base_url

    # Sign in: the overview.
    page.goto(f"{base}/console/")
    assert page.get_by_role("heading", name="Overview").is_visible()

    # Search a user, with the keyboard.
    page.get_by_role("link", name="Connections").click()
    page.get_by_label("End user").fill("user-42")
    page.get_by_label("End user").press("Enter")
    page.wait_for_url(re.compile(r"end_user_id=user-42"))
    assert page.get_by_role("link", name="conn-salesforce").is_visible()
    assert page.get_by_role("link", name="conn-github").count() == 0
    _shoot(page, "connections")

    # Open the connection and read its timeline.
    page.get_by_role("link", name="conn-salesforce").click()
    timeline = page.locator("ol.timeline")
    assert "creation" in timeline.inner_text()
    assert "refresh" in timeline.inner_text()
    assert "refresh_token_external_error" in page.locator("dl.facts").inner_text()
    _shoot(page, "connection")
    page.locator("ol.timeline a").first.click()
    assert page.get_by_role("heading", name=re.compile(r"Delivery #\d+")).is_visible()

    # The end user's summary.
    page.goto(f"{base}/console/end-users/user-42")
    assert page.get_by_text("Needs re-authorization").is_visible()
    _shoot(page, "end-user")

    # Replay a failed delivery and see it applied.
    page.get_by_role("link", name="Deliveries").click()
    page.get_by_label("Outcome").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    page.get_by_role("link", name=f"#{failed}").click()
    assert "failed" in page.locator("dl.facts").inner_text()
    _shoot(page, "delivery")
    page.get_by_role("button", name="Replay").click()
    assert page.get_by_role("status").inner_text().startswith("The delivery was replayed")
    assert "applied" in page.locator("dl.facts").inner_text()
    page.goto(f"{base}/console/connections?connection_id=conn-notion")
    assert page.get_by_role("link", name="conn-notion").is_visible()
    page.goto(f"{base}/console/deliveries")
    _shoot(page, "deliveries")

    # Reconcile against the fake Nango.
    page.get_by_role("link", name="Reconcile").click()
    page.get_by_role("button", name="Reconcile now").click()
    assert "Reconciliation finished" in page.get_by_role("status").inner_text()
    first_run = page.locator("tbody tr").first.inner_text()
    assert "console" in first_run
    assert "created 3" in first_run
    _shoot(page, "reconcile")

    # Create an API key (shown once), use it, revoke it.
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("support-dashboard")
    page.get_by_label("Read-only").check()
    page.get_by_role("button", name="Create").click()
    key = page.locator(".created code").inner_text()
    assert key.startswith("nreg_")
    lookup = httpx2.get(f"{base}/v1/connections", headers={"Authorization": f"Bearer {key}"})
    assert lookup.status_code == 200
    _shoot(page, "api-keys")
    page.get_by_role("button", name="Revoke support-dashboard").click()
    assert "revoked" in page.get_by_role("status").inner_text()
    assert key not in page.content()
    # Every instance refuses a revoked key within REFRESH_SECONDS (app.api.keys).
    deadline = time.monotonic() + REFRESH_SECONDS + 2
    while True:
        refused = httpx2.get(f"{base}/v1/connections", headers={"Authorization": f"Bearer {key}"})
        if refused.status_code == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert refused.status_code == 401

    # The overview, its figures refreshed behind the first view (CONSOLE_CACHE_SECONDS=0).
    page.goto(f"{base}/console/")
    for _ in range(20):
        if page.locator("svg rect.bar").count():
            break
        time.sleep(0.1)
        page.reload()
    assert page.locator("svg rect.bar").count() > 0
    assert "created 3" in page.locator(".card").nth(2).inner_text()
    _shoot(page, "overview")

    # Nothing was blocked by the Content-Security-Policy, no script failed.
    assert errors == []
    context.close()


def test_wrong_credentials_get_no_page(browser: Any, server: _Server) -> None:
    context = browser.new_context(http_credentials={"username": CONSOLE_USER, "password": "no"})
    response = context.new_page().goto(f"{server.base_url}/console/")
    assert response is not None
    assert response.status == 401
    context.close()
