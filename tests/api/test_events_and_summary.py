from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from starlette.testclient import TestClient

from tests.api.conftest import add_connection, add_delivery, add_event


def test_events_newest_first_with_their_deliveries_and_paginated(
    client: TestClient, auth_headers: dict[str, str], sync_engine: Engine
) -> None:
    pk = add_connection(sync_engine, connection_id="evt")
    other = add_connection(sync_engine, connection_id="other")
    delivery = add_delivery(
        sync_engine, connection_id="evt", received_at=datetime(2026, 5, 1, tzinfo=UTC)
    )
    first = add_event(sync_engine, pk, delivery_id=delivery, action="creation")
    add_event(sync_engine, other, action="creation")
    actions = ["refresh", "override", "sync", "refresh", "deletion"]
    later = [
        add_event(sync_engine, pk, action=action, source="reconcile", detail={"n": n})
        for n, action in enumerate(actions)
    ]

    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = client.get("/v1/connections/evt/events", params=params, headers=auth_headers)
        assert response.status_code == 200
        body = response.json()
        assert len(body["data"]) <= 2
        seen += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [item["id"] for item in seen] == sorted([first, *later], reverse=True)
    assert [item["action"] for item in seen] == [*reversed(actions), "creation"]
    assert seen[0]["detail"] == {"n": 4}
    assert seen[0]["delivery"] is None
    assert seen[-1]["delivery"] == {
        "id": delivery,
        "received_at": "2026-05-01T00:00:00Z",
        "webhook_type": "auth",
        "operation": "creation",
        "success": True,
        "outcome": "applied",
    }


def test_events_of_unknown_or_ambiguous_connections(
    client: TestClient, auth_headers: dict[str, str], sync_engine: Engine
) -> None:
    assert client.get("/v1/connections/none/events", headers=auth_headers).status_code == 404
    a = add_connection(sync_engine, connection_id="dup", integration_id="github")
    b = add_connection(sync_engine, connection_id="dup", integration_id="slack")
    add_event(sync_engine, a, action="creation")
    add_event(sync_engine, b, action="refresh")
    assert client.get("/v1/connections/dup/events", headers=auth_headers).status_code == 409
    slack = client.get(
        "/v1/connections/dup/events", params={"integration_id": "slack"}, headers=auth_headers
    ).json()
    assert [item["action"] for item in slack["data"]] == ["refresh"]


def test_event_cursor_is_bound_to_its_connection(
    client: TestClient, auth_headers: dict[str, str], sync_engine: Engine
) -> None:
    a = add_connection(sync_engine, connection_id="a")
    b = add_connection(sync_engine, connection_id="b")
    for _ in range(3):
        add_event(sync_engine, a)
        add_event(sync_engine, b)
    cursor = client.get(
        "/v1/connections/a/events", params={"limit": 1}, headers=auth_headers
    ).json()["next_cursor"]
    response = client.get(
        "/v1/connections/b/events", params={"cursor": cursor}, headers=auth_headers
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_cursor"
    bad_limit = client.get("/v1/connections/a/events?limit=0", headers=auth_headers)
    assert bad_limit.json()["error"]["details"] == {"parameter": "limit"}


def test_end_user_summary(
    client: TestClient, auth_headers: dict[str, str], sync_engine: Engine
) -> None:
    # github: an old broken connection and a newer healthy one -> connected, the healthy one.
    add_connection(sync_engine, connection_id="gh-old", end_user_id="u1", status="auth_error")
    add_connection(sync_engine, connection_id="gh-new", end_user_id="u1", status="active")
    # slack: only broken -> needs re-authorization.
    add_connection(
        sync_engine,
        connection_id="sl",
        integration_id="slack",
        end_user_id="u1",
        status="auth_error",
        error_type="refresh_token_external_error",
    )
    # hubspot: active then a newer broken one -> still connected through the active one.
    add_connection(sync_engine, connection_id="hs-ok", integration_id="hubspot", end_user_id="u1")
    add_connection(
        sync_engine,
        connection_id="hs-broken",
        integration_id="hubspot",
        end_user_id="u1",
        status="auth_error",
    )
    # jira: deleted only -> not listed. Another user's and a dev connection.
    add_connection(
        sync_engine, connection_id="ji", integration_id="jira", end_user_id="u1", status="deleted"
    )
    add_connection(sync_engine, connection_id="theirs", end_user_id="u2")
    add_connection(sync_engine, connection_id="gh-dev", end_user_id="u1", environment="dev")

    response = client.get("/v1/end-users/u1/summary", headers=auth_headers)
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["end_user_id"] == "u1"
    summary = {
        (item["integration_id"], item["environment"]): (
            item["connected"],
            item["needs_reauthorization"],
            item["connection"]["connection_id"],
            item["connection_count"],
        )
        for item in data["integrations"]
    }
    assert summary == {
        ("github", "dev"): (True, False, "gh-dev", 1),
        ("github", "prod"): (True, False, "gh-new", 2),
        ("hubspot", "prod"): (True, False, "hs-ok", 2),
        ("slack", "prod"): (False, True, "sl", 1),
    }
    prod = client.get(
        "/v1/end-users/u1/summary", params={"environment": "prod"}, headers=auth_headers
    ).json()["data"]["integrations"]
    assert {item["environment"] for item in prod} == {"prod"}
    assert len(prod) == 3


def test_end_user_summary_of_a_stranger_is_empty(
    client: TestClient, auth_headers: dict[str, str], sync_engine: Engine
) -> None:
    response = client.get("/v1/end-users/nobody/summary", headers=auth_headers)
    assert response.status_code == 200
    assert response.json() == {"data": {"end_user_id": "nobody", "integrations": []}}
    bad = client.get("/v1/end-users/nobody/summary?status=active", headers=auth_headers)
    assert bad.status_code == 400
    assert bad.json()["error"]["details"] == {"parameter": "status"}
