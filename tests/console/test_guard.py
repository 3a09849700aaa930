"""Who may see the console: off unless configured, Basic Auth, and the headers on every answer."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from app.console.guard import basic_credentials, check_credentials
from app.settings import Settings
from tests.console.conftest import CONSOLE_PASSWORD, CONSOLE_USER

PAGES = ["/console/", "/console/connections", "/console/reconcile", "/console/api-keys"]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"console_username": "op"}, {"console_password": "pw"}, {"console_username": " "}],
)
def test_off_unless_both_are_set(make_client: Any, overrides: dict[str, str]) -> None:
    client: TestClient = make_client(**overrides)
    for path in [*PAGES, "/console/static/console.css"]:
        response = client.get(path, auth=(CONSOLE_USER, CONSOLE_PASSWORD))
        assert response.status_code == 404, path


@pytest.mark.parametrize("path", PAGES)
def test_no_credentials_is_401_with_a_challenge(make_console: Any, path: str) -> None:
    client: TestClient = make_console()
    response = client.get(path, auth=None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Basic realm="nango-registry console"')
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    "credentials",
    [
        (CONSOLE_USER, "wrong"),
        ("someone", CONSOLE_PASSWORD),
        (CONSOLE_USER, CONSOLE_PASSWORD + "x"),
        (CONSOLE_USER, ""),
    ],
)
def test_wrong_credentials_are_401(make_console: Any, credentials: tuple[str, str]) -> None:
    client: TestClient = make_console()
    client.auth = credentials
    assert client.get("/console/").status_code == 401
    assert client.post("/console/reconcile", data={}).status_code == 401


@pytest.mark.parametrize(
    "header",
    ["Bearer abc", "Basic", "Basic !!!notbase64", "Basic bm9jb2xvbg==", "Basic /w==", ""],
)
def test_malformed_authorization_is_401(console: TestClient, header: str) -> None:
    response = console.get("/console/", headers={"Authorization": header}, auth=None)
    assert response.status_code == 401


def test_right_credentials_see_the_pages_with_strict_headers(console: TestClient) -> None:
    for path in PAGES:
        response = console.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
        # No inline script or style: everything comes from the two files the app serves.
        assert "<style" not in response.text
        assert " style=" not in response.text
        assert "<script>" not in response.text
        assert "<script src=" in response.text


def test_static_files_are_served_behind_the_same_guard(console: TestClient) -> None:
    css = console.get("/console/static/console.css")
    assert css.status_code == 200
    assert css.headers["cache-control"] == "no-store"
    script = console.get("/console/static/console.js")
    assert script.status_code == 200
    assert "clipboard" in script.text
    assert console.get("/console/static/console.css", auth=None).status_code == 401


def test_the_rest_of_the_service_is_unchanged(console: TestClient) -> None:
    assert console.get("/healthz", auth=None).status_code == 200
    assert "content-security-policy" not in console.get("/healthz", auth=None).headers


def test_the_password_is_never_logged(console: TestClient) -> None:
    # tests.console.conftest registers the password with the secret scan, which reads every
    # log line of the session; a wrong password is not logged either.
    console.get("/console/", auth=(CONSOLE_USER, "a-wrong-guess-for-the-logs"))
    assert console.get("/console/").status_code == 200


def test_credentials_helpers() -> None:
    assert basic_credentials(None) is None
    assert basic_credentials("Basic b3A6cHc=") == ("op", "pw")
    assert basic_credentials("basic b3A6cDp3") == ("op", "p:w")  # a password may hold ":"
    settings = Settings(_env_file=None)
    assert not check_credentials(settings, "op", "pw")
    on = Settings(console_username="op", console_password="pw", _env_file=None)
    assert check_credentials(on, "op", "pw")
    assert not check_credentials(on, "op", "pW")
    assert not check_credentials(on, "Op", "pw")
