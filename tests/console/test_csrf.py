"""Every change is a POST with a CSRF token bound to the user and expiring; else 403."""

from __future__ import annotations

import time
from typing import Any

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from starlette.testclient import TestClient

from app.console import csrf
from app.errors import Forbidden
from app.settings import Settings
from tests.conftest import TEST_SECRET
from tests.console.conftest import CONSOLE_USER, csrf_token, post_form

# Every action of the console, with a form that would otherwise be valid.
ACTIONS = [
    ("/console/api-keys", {"name": "csrf-test"}),
    ("/console/api-keys/some-key/revoke", {}),
    ("/console/reconcile", {}),
    ("/console/connections/1/delete", {"confirm": "yes"}),
    ("/console/connections/1/reconnect", {}),
    ("/console/connections/1/refresh", {}),
    ("/console/connections/1/owner", {"end_user_id": "u1"}),
    ("/console/deliveries/1/replay", {}),
    ("/console/deliveries/replay-failed", {}),
]


def _aged_token(seconds: int, user: str = CONSOLE_USER) -> str:
    class Signer(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - seconds

    serializer = URLSafeTimedSerializer(TEST_SECRET, salt=csrf.SALT, signer=Signer)
    return str(serializer.dumps({"u": csrf.user_tag(user)}))


@pytest.mark.parametrize(("path", "data"), ACTIONS)
def test_missing_token_is_403(console: TestClient, path: str, data: dict[str, str]) -> None:
    response = console.post(path, data=data)
    assert response.status_code == 403
    assert "csrf_missing" in response.text
    assert response.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(("path", "data"), ACTIONS)
def test_tampered_token_is_403(console: TestClient, path: str, data: dict[str, str]) -> None:
    token = csrf_token(console)
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    response = post_form(console, path, data, token=tampered)
    assert response.status_code == 403
    assert "csrf_invalid" in response.text


@pytest.mark.parametrize(("path", "data"), ACTIONS)
def test_expired_token_is_403(console: TestClient, path: str, data: dict[str, str]) -> None:
    response = post_form(console, path, data, token=_aged_token(4 * 3600 + 5))
    assert response.status_code == 403
    assert "csrf_invalid" in response.text


def test_max_age_is_a_setting(make_console: Any) -> None:
    client: TestClient = make_console(console_csrf_max_age_seconds=60)
    old = post_form(client, "/console/api-keys", {"name": "k1"}, token=_aged_token(120))
    assert old.status_code == 403
    fresh = post_form(client, "/console/api-keys", {"name": "k1"}, token=_aged_token(30))
    assert fresh.status_code == 201


def test_a_token_of_another_user_is_403(make_console: Any) -> None:
    client: TestClient = make_console()
    response = post_form(client, "/console/api-keys", {"name": "k"}, token=_aged_token(0, "eve"))
    assert response.status_code == 403


def test_a_token_signed_with_another_key_is_403(console: TestClient) -> None:
    forged = URLSafeTimedSerializer("another-key", salt=csrf.SALT).dumps(
        {"u": csrf.user_tag(CONSOLE_USER)}
    )
    response = post_form(console, "/console/api-keys", {"name": "k"}, token=str(forged))
    assert response.status_code == 403


def test_a_token_outside_a_form_is_not_read(console: TestClient) -> None:
    response = console.post("/console/reconcile", json={"csrf_token": csrf_token(console)})
    assert response.status_code == 403
    assert "csrf_missing" in response.text
    raw = console.post(
        "/console/reconcile",
        content=b"csrf_token=\xff",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert raw.status_code == 400
    assert "bad_request" in raw.text


def test_a_get_changes_nothing(console: TestClient) -> None:
    assert console.get("/console/connections/1/delete").status_code == 405
    assert console.get("/console/deliveries/replay-failed").status_code == 405


def test_check_token_refuses_what_is_not_a_token() -> None:
    settings = Settings(secret_key="k", _env_file=None)
    token = csrf.issue_token(settings, "op")
    csrf.check_token(settings, "op", token)
    for bad in (None, "", 42, "x.y.z"):
        with pytest.raises(Forbidden):
            csrf.check_token(settings, "op", bad)
    wrong_shape = URLSafeTimedSerializer("k", salt=csrf.SALT).dumps(["op"])
    with pytest.raises(Forbidden):
        csrf.check_token(settings, "op", wrong_shape)
