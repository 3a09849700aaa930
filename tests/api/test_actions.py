"""The routes that act on Nango, over HTTP, against the fake Nango and a real database."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, insert, text
from sqlmodel import SQLModel
from starlette.testclient import TestClient

from app.api.keys import hash_key
from tests.fakes.nango import FakeNango
from tests.rows import connection_row, insert_connection

API_KEYS = SQLModel.metadata.tables["api_keys"]


# Connect sessions ---------------------------------------------------------------------------


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
    assert set(session) == {"token", "connect_link", "expires_at"}
    assert session["token"] in fake_nango.sessions
    [sent] = fake_nango.requests_to("POST", "/connect/sessions")
    assert sent.body == {
        "tags": {
            "end_user_id": "user-42",
            "end_user_email": "ada@example.com",
            "organization_id": "org-7",
            "team": "platform",
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
        (
            {
                "end_user_id": "u",
                "organization_id": "o",
                "tags": {f"t{i}": "v" for i in range(9)},
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
    body = {"end_user_id": "u", "organization_id": "o", "tags": {f"t{i}": "v" for i in range(8)}}
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


# Reconnect sessions -------------------------------------------------------------------------


def test_reconnect_sends_the_stored_tags_again(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="conn-1", integration_id="github")
    insert_connection(
        sync_engine,
        end_user_id="user-1",
        organization_id="org-1",
        tags={"end_user_id": "user-1", "team": "core", "bad key": "dropped"},
    )
    response = api.post("/v1/connections/conn-1/reconnect-session", headers=auth_headers)
    assert response.status_code == 201, response.text
    assert response.json()["token"].startswith("nango_connect_session_")
    [sent] = fake_nango.requests_to("POST", "/connect/sessions/reconnect")
    assert sent.body == {
        "connection_id": "conn-1",
        "integration_id": "github",
        "tags": {"end_user_id": "user-1", "organization_id": "org-1", "team": "core"},
    }


def test_reconnect_of_a_connection_nango_no_longer_has_is_404(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    insert_connection(sync_engine, end_user_id="user-1")  # stored here, unknown to the fake
    response = api.post("/v1/connections/conn-1/reconnect-session", headers=auth_headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_at_nango"
    assert len(fake_nango.requests_to("POST", "/connect/sessions/reconnect")) == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/connect-sessions"),
        ("POST", "/v1/connections/conn-1/reconnect-session"),
        ("DELETE", "/v1/connections/conn-1"),
        ("POST", "/v1/reconcile"),
        ("POST", "/v1/legacy/auth-hmac"),
    ],
)
def test_actions_refuse_unknown_query_parameters_before_acting(
    api: TestClient,
    auth_headers: dict[str, str],
    fake_nango: FakeNango,
    sync_engine: Engine,
    method: str,
    path: str,
) -> None:
    insert_connection(sync_engine, end_user_id="user-1")
    response = api.request(method, f"{path}?dry_run=true", headers=auth_headers)
    assert response.status_code == 400
    assert response.json()["error"]["details"]["parameter"] == "dry_run"
    assert fake_nango.requests == []


def test_reconnect_ambiguous_legacy_id_needs_integration_id(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="user-9", integration_id="slack")
    for integration in ("github", "slack"):
        insert_connection(
            sync_engine, integration_id=integration, connection_id="user-9", end_user_id="user-9"
        )
    response = api.post("/v1/connections/user-9/reconnect-session", headers=auth_headers)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "ambiguous_connection_id"
    response = api.post(
        "/v1/connections/user-9/reconnect-session",
        headers=auth_headers,
        json={"integration_id": "slack"},
    )
    assert response.status_code == 201, response.text
    response = api.post(
        "/v1/connections/user-9/reconnect-session?integration_id=github",
        headers=auth_headers,
        json={"integration_id": "slack"},
    )
    assert response.status_code == 400


def test_reconnect_unknown_or_deleted(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    response = api.post("/v1/connections/nope/reconnect-session", headers=auth_headers)
    assert response.status_code == 404
    insert_connection(sync_engine, connection_id="gone", status="deleted", end_user_id="u")
    response = api.post("/v1/connections/gone/reconnect-session", headers=auth_headers)
    assert response.status_code == 409
    assert fake_nango.requests == []


def test_reconnect_refused_by_nango_is_502(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    # (A connection Nango does not know is a 404: see the test above.)
    fake_nango.add_connection(connection_id="only-here", integration_id="github")
    insert_connection(sync_engine, connection_id="only-here", end_user_id="u")
    fake_nango.fail_next(1, status=400, code="invalid_body")
    response = api.post("/v1/connections/only-here/reconnect-session", headers=auth_headers)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "nango_invalid_body"


# Deletes ------------------------------------------------------------------------------------


def test_delete_at_nango_then_here_and_idempotent(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="conn-1", integration_id="github")
    insert_connection(sync_engine, end_user_id="user-1")
    response = api.delete("/v1/connections/conn-1", headers=auth_headers)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["status"] == "deleted"
    assert fake_nango.find("conn-1") is None
    row = connection_row(sync_engine, "conn-1")
    assert row.status == "deleted"
    assert row.deleted_at is not None
    # Again: Nango answers unknown_connection, which counts as deleted; no second event.
    again = api.delete("/v1/connections/conn-1", headers=auth_headers)
    assert again.status_code == 200
    assert again.json()["data"]["status"] == "deleted"
    with sync_engine.connect() as conn:
        events = conn.execute(text("SELECT source, action, to_status FROM connection_events")).all()
    assert [tuple(e) for e in events] == [("api", "deletion", "deleted")]
    assert len(fake_nango.requests_to("DELETE", "/connections/conn-1")) == 2


def test_delete_unknown_here_is_404(api: TestClient, auth_headers: dict[str, str]) -> None:
    response = api.delete("/v1/connections/nope", headers=auth_headers)
    assert response.status_code == 404


def test_delete_failing_at_nango_keeps_the_connection(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="conn-1")
    insert_connection(sync_engine)
    fake_nango.fail_next(3, status=500)
    response = api.delete("/v1/connections/conn-1", headers=auth_headers)
    assert response.status_code == 502
    assert connection_row(sync_engine, "conn-1").status == "active"
    fake_nango.fail_next(1, status=403, code="forbidden")
    response = api.delete("/v1/connections/conn-1", headers=auth_headers)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "nango_forbidden"
    assert connection_row(sync_engine, "conn-1").status == "active"


def test_delete_legacy_id_with_a_slash(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="team/42", integration_id="github")
    insert_connection(sync_engine, connection_id="team/42")
    # A "/" inside an ID is sent as %2F; a raw "/" separates path segments.
    raw = api.delete("/v1/connections/team/42?integration_id=github", headers=auth_headers)
    assert raw.status_code == 404
    response = api.delete("/v1/connections/team%2F42?integration_id=github", headers=auth_headers)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["connection_id"] == "team/42"
    assert fake_nango.connections == []


# Legacy HMAC --------------------------------------------------------------------------------


def test_legacy_hmac_matches_the_facts_vector(
    make_client: Any, auth_headers: dict[str, str]
) -> None:
    api = make_client(nango_legacy_hmac_key="my-hmac-key")
    response = api.post(
        "/v1/legacy/auth-hmac",
        headers=auth_headers,
        json={"integration_id": "github", "connection_id": "user-123"},
    )
    assert response.status_code == 200
    assert response.json() == {
        "hmac": "288fab16636850549d832b71437aa742468d6d2cbbd678697cb3356243b1ce2e"
    }
    response = api.post(
        "/v1/legacy/auth-hmac", headers=auth_headers, json={"integration_id": "github"}
    )
    assert response.status_code == 400


def test_legacy_hmac_is_404_without_a_key(api: TestClient, auth_headers: dict[str, str]) -> None:
    response = api.post(
        "/v1/legacy/auth-hmac",
        headers=auth_headers,
        json={"integration_id": "github", "connection_id": "user-123"},
    )
    assert response.status_code == 404
