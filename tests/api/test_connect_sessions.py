"""POST /v1/connect-sessions over HTTP, against the fake Nango and a real database."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, insert, update
from sqlmodel import SQLModel
from starlette.testclient import TestClient

import app.db.tables  # noqa: F401  (registers the tables on the metadata)
from app.api.keys import hash_key
from tests.fakes.nango import FakeNango
from tests.webhooks.helpers import auth_body, signed_headers

API_KEYS = SQLModel.metadata.tables["api_keys"]
SESSIONS = SQLModel.metadata.tables["connect_sessions"]


def test_connect_session_sends_tags_and_answers_201(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango
) -> None:
    response = api.post(
        "/v1/connect-sessions",
        headers=auth_headers,
        json={
            "end_user_id": "user-42",
            "end_user_email": "ada@example.com",
            "organization_id": "org-7",
            "allowed_integrations": ["github", "slack"],
            "tags": {"Team": "platform"},
        },
    )
    assert response.status_code == 201, response.text
    session = response.json()
    assert set(session) == {"token", "connect_link", "expires_at", "session_id"}
    assert session["token"] in fake_nango.sessions
    [sent] = fake_nango.requests_to("POST", "/connect/sessions")
    assert sent.body == {
        "tags": {
            "end_user_id": "user-42",
            "end_user_email": "ada@example.com",
            "organization_id": "org-7",
            "team": "platform",
            "connect_session_id": session["session_id"],
        },
        "allowed_integrations": ["github", "slack"],
    }
    assert "end_user" not in sent.body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "end_user_id"),
        ({"end_user_id": ""}, "end_user_id"),
        ({"end_user_id": "   "}, "end_user_id"),
        # The limit applies to the value as sent, as /openapi.json says (schemathesis found it).
        ({"end_user_id": " " + "u" * 255}, "end_user_id"),
        ({"end_user_id": "u", "end_user_email": "not-an-email"}, "end_user_email"),
        ({"end_user_id": "u", "tags": {"1bad": "x"}}, "tags"),
        ({"end_user_id": "u", "tags": {"a" * 65: "x"}}, "tags"),
        ({"end_user_id": "u", "tags": {"ok": ""}}, "tags"),
        ({"end_user_id": "u", "tags": {"ok": "x" * 256}}, "tags"),
        ({"end_user_id": "u", "tags": {"end_user_id": "other"}}, "tags"),
        ({"end_user_id": "u", "unknown": 1}, "unknown"),
        ({"end_user_id": 5}, "end_user_id"),
        ({"end_user_id": "u", "allowed_integrations": "github"}, "allowed_integrations"),
        # Nango's own rules (docs/nango.md, Corrections 7): refused here, not by Nango with a 502.
        ({"end_user_id": "u", "allowed_integrations": ["git/hub"]}, "allowed_integrations"),
        ({"end_user_id": "u", "allowed_integrations": ["g" * 256]}, "allowed_integrations"),
        ({"end_user_id": "u", "end_user_email": "a@b.c"}, "end_user_email"),  # 1-letter TLD
        ({"end_user_id": "u", "end_user_email": "ad\u00e9@x.io"}, "end_user_email"),  # not ASCII
        ({"end_user_id": "u", "end_user_email": "a..b@x.io"}, "end_user_email"),
        ({"end_user_id": "u", "tags": {"Team": "a", "team": "b"}}, "tags"),  # collide lowercased
        ({"end_user_id": "u", "tags": {"Connect_Session_ID": "mine"}}, "tags"),  # ours to set
        (
            {
                "end_user_id": "u",
                "organization_id": "o",
                "tags": {f"t{i}": "v" for i in range(8)},
            },
            "body",
        ),
    ],
)
def test_connect_session_invalid_input_is_400_before_nango(
    api: TestClient,
    auth_headers: dict[str, str],
    fake_nango: FakeNango,
    body: dict[str, Any],
    field: str,
) -> None:
    response = api.post("/v1/connect-sessions", headers=auth_headers, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_body"
    assert error["details"]["errors"][0]["field"].startswith(field)
    assert fake_nango.requests == []


def test_ten_tags_in_all_are_accepted(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango
) -> None:
    # Nine of the caller's, and the session's own.
    body = {"end_user_id": "u", "organization_id": "o", "tags": {f"t{i}": "v" for i in range(7)}}
    response = api.post("/v1/connect-sessions", headers=auth_headers, json=body)
    assert response.status_code == 201, response.text
    assert len(fake_nango.requests[0].body["tags"]) == 10


def test_not_json_is_400(api: TestClient, auth_headers: dict[str, str]) -> None:
    response = api.post("/v1/connect-sessions", headers=auth_headers, content=b"[1")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_actions_need_a_full_access_key(api: TestClient, fake_nango: FakeNango) -> None:
    response = api.post("/v1/connect-sessions", json={"end_user_id": "u"})
    assert response.status_code == 401
    response = api.post(
        "/v1/reconcile", headers={"Authorization": "Bearer wrong"}, json={"end_user_id": "u"}
    )
    assert response.status_code == 401
    assert fake_nango.requests == []


def test_a_read_only_key_is_403(
    api: TestClient, fake_nango: FakeNango, sync_engine: Engine
) -> None:
    with sync_engine.begin() as conn:
        conn.execute(
            insert(API_KEYS).values(
                name="reader",
                key_hash=hash_key("read-only-key"),
                read_only=True,
                created_at=datetime.now(UTC),
            )
        )
    headers = {"Authorization": "Bearer read-only-key"}
    for method, path in [
        ("POST", "/v1/connect-sessions"),
        ("POST", "/v1/connections/c1/reconnect-session"),
        ("DELETE", "/v1/connections/c1"),
        ("POST", "/v1/reconcile"),
        ("POST", "/v1/legacy/auth-hmac"),
    ]:
        response = api.request(method, path, headers=headers, json={"end_user_id": "u"})
        assert response.status_code == 403, (method, path)
    assert fake_nango.requests == []


def test_nango_5xx_is_retried_then_502(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango
) -> None:
    fake_nango.fail_next(3, status=503)
    response = api.post("/v1/connect-sessions", headers=auth_headers, json={"end_user_id": "u"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "nango_unavailable"
    assert len(fake_nango.requests) == 3


def test_nango_5xx_then_success_is_201(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango
) -> None:
    fake_nango.fail_next(2, status=500)
    response = api.post("/v1/connect-sessions", headers=auth_headers, json={"end_user_id": "u"})
    assert response.status_code == 201
    assert len(fake_nango.requests) == 3


def test_nango_timeout_is_502(
    make_client: Any, auth_headers: dict[str, str], fake_nango: FakeNango
) -> None:
    api = make_client(nango_timeout_seconds=0.2, nango_max_retries=1)
    fake_nango.stall_next(2, seconds=5)
    response = api.post("/v1/connect-sessions", headers=auth_headers, json={"end_user_id": "u"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "nango_unavailable"
    assert "TimeoutError" in response.json()["error"]["message"]
    assert len(fake_nango.requests) == 2


def test_nango_400_is_502_with_nangos_code(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango
) -> None:
    fake_nango.fail_next(1, status=400, code="invalid_body")
    response = api.post("/v1/connect-sessions", headers=auth_headers, json={"end_user_id": "u"})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "nango_invalid_body"
    assert error["details"] == {"nango_status": 400, "nango_code": "invalid_body"}
    assert len(fake_nango.requests) == 1


def test_nango_401_is_502_and_the_secret_stays_secret(
    make_client: Any,
    auth_headers: dict[str, str],
    fake_nango: FakeNango,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk-live-not-the-fakes-key-123456"
    api = make_client(nango_secret_key=secret)
    response = api.post("/v1/connect-sessions", headers=auth_headers, json={"end_user_id": "u"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "nango_unknown_account"
    fake_nango.fail_next(3, status=500)
    response_5xx = api.post("/v1/reconcile", headers=auth_headers)
    assert response_5xx.status_code == 502
    logs = caplog.text + capsys.readouterr().err
    assert "nango_rejected" in logs
    for text_ in (response.text, response_5xx.text, logs, repr(api.app.state.registry)):
        assert secret not in text_
    # It was sent, as a bearer token, and nowhere else.
    assert fake_nango.requests[0].headers["authorization"] == f"Bearer {secret}"


def test_no_nango_secret_is_503(make_client: Any, auth_headers: dict[str, str]) -> None:
    api = make_client(nango_secret_key=None)
    response = api.post("/v1/connect-sessions", headers=auth_headers, json={"end_user_id": "u"})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "nango_not_configured"
    assert "NANGO_SECRET_KEY" in error["message"]


# The session's outcome ----------------------------------------------------------------------


def open_session(api: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    response = api.post("/v1/connect-sessions", headers=headers, json={"end_user_id": "u1"})
    assert response.status_code == 201, response.text
    session: dict[str, Any] = response.json()
    return session


def outcome(api: TestClient, headers: dict[str, str], session_id: str, wait: int = 0) -> Any:
    response = api.get(f"/v1/connect-sessions/{session_id}", params={"wait": wait}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def finish(api: TestClient, fake_nango: FakeNango, token: str) -> None:
    """The user completes the Connect UI; Nango sends the creation webhook with the tags."""
    connection = fake_nango.complete_session(token)
    body = auth_body(connection_id=connection.connection_id, tags=connection.tags)
    assert api.post("/webhooks/nango", content=body, headers=signed_headers(body)).is_success


def test_a_session_is_pending_then_connected(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango
) -> None:
    session = open_session(api, auth_headers)
    assert session["session_id"].startswith("cs_")
    assert outcome(api, auth_headers, session["session_id"]) == {
        "status": "pending",
        "connection": None,
    }
    finish(api, fake_nango, session["token"])
    done = outcome(api, auth_headers, session["session_id"])
    assert done["status"] == "connected"
    assert done["connection"]["end_user"]["id"] == "u1"
    assert done["connection"]["tags"]["connect_session_id"] == session["session_id"]


def test_the_long_poll_returns_within_a_second_of_the_webhook(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango
) -> None:
    session = open_session(api, auth_headers)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(outcome, api, auth_headers, session["session_id"], 20)
        time.sleep(0.5)
        assert not waiting.done()
        finish(api, fake_nango, session["token"])
        sent = time.monotonic()
        answer = waiting.result(timeout=5)
        assert time.monotonic() - sent < 1.0
    assert answer["status"] == "connected"


def test_a_long_poll_with_nothing_to_report_answers_pending_after_wait(
    make_client: Any, auth_headers: dict[str, str]
) -> None:
    api = make_client(feed_poll_interval_seconds=0.2)
    session = open_session(api, auth_headers)
    started = time.monotonic()
    assert outcome(api, auth_headers, session["session_id"], wait=1)["status"] == "pending"
    assert 0.9 < time.monotonic() - started < 5


def test_an_expired_session_and_an_unknown_one(
    api: TestClient, auth_headers: dict[str, str], sync_engine: Engine
) -> None:
    session = open_session(api, auth_headers)
    with sync_engine.begin() as conn:
        conn.execute(update(SESSIONS).values(expires_at=datetime(2026, 1, 1, tzinfo=UTC)))
    assert outcome(api, auth_headers, session["session_id"], wait=5)["status"] == "expired"
    response = api.get("/v1/connect-sessions/cs_nope", headers=auth_headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "connect_session_not_found"


def test_a_session_id_with_nul_is_unknown_on_both_databases(
    api: TestClient, auth_headers: dict[str, str]
) -> None:
    # Postgres text cannot hold NUL, so no session has such an ID: the same 404 as SQLite's.
    for session_id in ("cs_a%00b", "%00"):
        response = api.get(f"/v1/connect-sessions/{session_id}", headers=auth_headers)
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "connect_session_not_found"
