"""GET /v1/end-users/{id}/summary."""

from sqlalchemy import Engine
from starlette.testclient import TestClient

from tests.rows import add_connection


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
