"""The fake Nango itself answers as Nango's server does (NangoHQ/nango 2f4c0af, v0.71.4).

The fake is the oracle of the suite: when it is wrong, every test that trusts it is wrong too.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.fakes.nango import CREDENTIAL_MARKER, DEFAULT_SECRET, FakeNango

AUTH = {"Authorization": f"Bearer {DEFAULT_SECRET}"}


@pytest.fixture
def fake() -> FakeNango:
    return FakeNango(integrations=["github", "slack"])


@pytest.fixture
def nango(fake: FakeNango) -> TestClient:
    return TestClient(fake.app, headers=AUTH)


def listed(nango: TestClient, **query: Any) -> list[str]:
    response = nango.get("/connections", params=query)
    assert response.status_code == 200, response.text
    return [c["connection_id"] for c in response.json()["connections"]]


def error_code(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


# The listing --------------------------------------------------------------------------------


def test_search_is_a_case_insensitive_substring_with_sql_wildcards(
    fake: FakeNango, nango: TestClient
) -> None:
    fake.add_connection(connection_id="user_1")
    fake.add_connection(connection_id="userX1")
    fake.add_connection(connection_id="USER-10")
    fake.add_connection(
        connection_id="0d7e5c1a", end_user={"id": "u9", "display_name": "Ada User_1", "email": None}
    )
    fake.add_connection(connection_id="abc", end_user={"id": "u8", "email": "user_1@example.com"})
    # "_" is any one character and "%" any run, as in Postgres' ILIKE; "\" makes them literal.
    assert listed(nango, search="user_1") == ["abc", "0d7e5c1a", "USER-10", "userX1", "user_1"]
    assert listed(nango, search="user\\_1") == ["abc", "0d7e5c1a", "user_1"]
    assert listed(nango, search="u%10") == ["USER-10"]
    assert listed(nango, search="nobody") == []


def test_exact_filters(fake: FakeNango, nango: TestClient) -> None:
    fake.add_connection(connection_id="user-1", integration_id="github")
    fake.add_connection(connection_id="user-1", integration_id="slack")
    fake.add_connection(connection_id="user-10", integration_id="github")
    org = {"id": "org-1", "display_name": None}
    fake.add_connection(
        connection_id="owned", end_user={"id": "u1", "organization": org}, tags={"plan": "pro"}
    )
    assert listed(nango, connectionId="user-1") == ["user-1", "user-1"]
    [only] = nango.get(
        "/connections", params={"connectionId": "user-1", "integrationId": "slack"}
    ).json()["connections"]
    assert only["provider_config_key"] == "slack"
    assert listed(nango, integrationId="slack, github", connectionId="user-10") == ["user-10"]
    assert listed(nango, endUserId="u1") == listed(nango, endUserOrganizationId="org-1")
    assert listed(nango, endUserId="u1") == ["owned"]
    assert listed(nango, **{"tags[PLAN]": "pro"}) == ["owned"]
    assert listed(nango, **{"tags[plan]": "Pro"}) == []


def test_listing_defaults_limits_and_order(fake: FakeNango, nango: TestClient) -> None:
    made = [fake.add_connection(connection_id=f"c{i}") for i in range(5)]
    newest_first = [c.connection_id for c in reversed(made)]
    assert listed(nango) == newest_first  # no limit: 10,000
    assert listed(nango, limit=2, page=2) == newest_first[4:]
    for bad in ({"limit": 0}, {"limit": 2001}, {"limit": "ten"}, {"page": -1}, {"search": ""}):
        assert error_code(nango.get("/connections", params=bad)) == (400, "invalid_query_params")
    response = nango.get("/connections", params={"integration_id": "github"})
    assert error_code(response) == (400, "invalid_query_params")


def test_errors_are_typed_auth_or_sync(fake: FakeNango, nango: TestClient) -> None:
    fake.add_connection(connection_id="c", errors=["auth", "sync"])
    [entry] = nango.get("/connections").json()["connections"]
    assert [e["type"] for e in entry["errors"]] == ["auth", "sync"]
    assert all(e["log_id"] for e in entry["errors"])
    assert set(entry) == {
        "id",
        "connection_id",
        "provider_config_key",
        "provider",
        "errors",
        "end_user",
        "tags",
        "metadata",
        "created",
    }
    assert entry["created"].endswith(".000Z")
    with pytest.raises(ValueError, match="'auth' or 'sync'"):
        fake.add_connection(errors=["refresh_token_error"])  # type: ignore[list-item]


# Rate limit ---------------------------------------------------------------------------------


def test_rate_limit_per_window(fake: FakeNango, nango: TestClient) -> None:
    fake.limiter.per_window(2, window=0.3)
    first = nango.get("/connections")
    assert first.headers["X-RateLimit-Limit"] == "2"
    assert first.headers["X-RateLimit-Remaining"] == "1"
    assert int(first.headers["X-RateLimit-Reset"]) >= int(time.time())
    assert nango.get("/connections").status_code == 200
    refused = nango.get("/connections")
    assert refused.status_code == 429
    assert refused.json() == {
        "error": {"code": "too_many_request", "method": "GET", "path": "/connections"}
    }
    assert refused.headers["Retry-After"] == "0"  # whole seconds, rounded down
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    time.sleep(0.35)
    assert nango.get("/connections").status_code == 200
    assert fake.limiter.refusals == 1


def test_forced_429s_and_authentication_first(fake: FakeNango, nango: TestClient) -> None:
    fake.limiter.refuse_next(2, retry_after=3)
    assert TestClient(fake.app).get("/connections").status_code == 401  # not counted
    for _ in range(2):
        refused = nango.get("/connections")
        assert (refused.status_code, refused.headers["Retry-After"]) == (429, "3")
    assert nango.get("/connections").status_code == 200


# One connection -----------------------------------------------------------------------------


def test_get_connection_answers_config_metadata_and_credentials(
    fake: FakeNango, nango: TestClient
) -> None:
    fake.add_connection(
        connection_id="c1",
        integration_id="slack",
        metadata={"fields": ["a"]},
        connection_config={"subdomain": "acme"},
        tags={"end_user_id": "u1"},
    )
    answer = nango.get("/connections/c1", params={"provider_config_key": "slack"}).json()
    assert answer["connection_config"] == {"subdomain": "acme"}
    assert answer["metadata"] == {"fields": ["a"]}
    assert answer["tags"] == {"end_user_id": "u1"}
    assert answer["created_at"].endswith("+00:00")
    assert answer["last_fetched_at"] is not None
    assert answer["credentials"]["access_token"].startswith(CREDENTIAL_MARKER)
    assert {"end_user", "errors", "updated_at", "webhook_url_override"} <= set(answer)

    unknown = nango.get("/connections/nope", params={"provider_config_key": "slack"})
    assert error_code(unknown) == (404, "not_found")
    no_integration = nango.get("/connections/c1", params={"provider_config_key": "jira"})
    assert error_code(no_integration) == (400, "unknown_provider_config")
    assert error_code(nango.get("/connections/c1")) == (400, "invalid_query_params")


def test_delete_unknown_connection_is_400_unknown_connection(nango: TestClient) -> None:
    response = nango.delete("/connections/nope", params={"provider_config_key": "jira"})
    assert response.status_code == 400
    assert response.json() == {"error": {"code": "unknown_connection"}}


def test_patch_connection_replaces_tags(fake: FakeNango, nango: TestClient) -> None:
    made = fake.add_connection(connection_id="c1", tags={"end_user_id": "u1", "team": "a"})
    query = {"provider_config_key": "github"}
    response = nango.patch("/connections/c1", params=query, json={"tags": {"Plan": "pro"}})
    assert response.json() == {"success": True}
    assert made.tags == {"plan": "pro"}
    nango.patch("/connections/c1", params=query, json={"end_user": {"id": "u2"}, "tags": {}})
    assert made.tags == {"end_user_id": "u2"}
    assert made.end_user is not None
    assert made.end_user["id"] == "u2"
    refused: list[dict[str, Any]] = [{"tags": {"a": "1", "A": "2"}}, {"tags": {"1a": "x"}}]
    for body in [*refused, {"metadata": {}}]:
        assert error_code(nango.patch("/connections/c1", params=query, json=body)) == (
            400,
            "invalid_body",
        )
    assert made.tags == {"end_user_id": "u2"}
    missing = nango.patch("/connections/nope", params=query, json={"tags": {}})
    assert error_code(missing) == (404, "not_found")


def test_metadata_replace_merge_and_unknown(fake: FakeNango, nango: TestClient) -> None:
    one = fake.add_connection(connection_id="c1", metadata={"a": 1, "b": 1})
    two = fake.add_connection(connection_id="c2")
    body = {"connection_id": ["c1", "c2"], "provider_config_key": "github", "metadata": {"b": 2}}
    merged = nango.patch("/connections/metadata", json=body)
    assert (merged.status_code, merged.json()) == (200, body)
    assert (one.metadata, two.metadata) == ({"a": 1, "b": 2}, {"b": 2})
    body = {"connection_id": "c1", "provider_config_key": "github", "metadata": {"c": 3}}
    assert nango.post("/connections/metadata", json=body).status_code == 201
    assert one.metadata == {"c": 3}
    body = {"connection_id": ["c2", "nope"], "provider_config_key": "github", "metadata": {}}
    refused = nango.post("/connections/metadata", json=body)
    assert error_code(refused) == (404, "unknown_connection")
    assert "No actions were taken" in refused.json()["error"]["message"]
    assert two.metadata == {"b": 2}  # all or nothing
    bad = {"connection_id": "c1", "provider_config_key": "github", "metadata": [1]}
    assert error_code(nango.post("/connections/metadata", json=bad)) == (400, "invalid_body")


# Connect sessions ---------------------------------------------------------------------------


def test_reconnect_unknown_connection_or_integration(fake: FakeNango, nango: TestClient) -> None:
    fake.add_connection(connection_id="c1", integration_id="github")
    for connection_id, integration_id in (("nope", "github"), ("c1", "slack")):
        response = nango.post(
            "/connect/sessions/reconnect",
            json={"connection_id": connection_id, "integration_id": integration_id},
        )
        assert response.status_code == 400
        assert response.json() == {
            "error": {
                "code": "invalid_body",
                "message": "ConnectionID or IntegrationId does not exists",
            }
        }
    body = {"connection_id": "c1", "integration_id": "github"}
    assert nango.post("/connect/sessions/reconnect", json=body).status_code == 201


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"tags": {"plan": "a", "PLAN": "b"}}, ["tags"]),
        ({"tags": {"end_user_email": "ada@example"}}, ["tags"]),
        ({"tags": {"end_user_email": "a@b.1"}}, ["tags"]),
        ({"tags": {"end_user_email": "é@example.com"}}, ["tags"]),
        ({"tags": {"x": ""}}, ["tags", "x"]),
        ({"tags": {"u": "1"}, "allowed_integrations": ["git hub!"]}, ["allowed_integrations", "0"]),
        ({"tags": {"u": "1"}, "allowed_integrations": ["g" * 256]}, ["allowed_integrations", "0"]),
        ({"tags": {"u": "1"}, "allowed_integrations": ["jira"]}, ["allowed_integrations", "0"]),
        ({"end_user": {"id": "u", "email": "nope"}}, ["end_user", "email"]),
        ({"allowed_integrations": ["github"]}, ["end_user"]),
    ],
)
def test_connect_session_rules(nango: TestClient, body: dict[str, Any], path: list[str]) -> None:
    response = nango.post("/connect/sessions", json=body)
    assert error_code(response) == (400, "invalid_body")
    assert path in [issue["path"] for issue in response.json()["error"]["errors"]]


def test_connect_session_keeps_tags_lowercased(fake: FakeNango, nango: TestClient) -> None:
    body = {
        "tags": {"End_User_Id": "u1", "end_user_email": "ada@example.com"},
        "allowed_integrations": ["github", "slack"],
    }
    response = nango.post("/connect/sessions", json=body)
    assert response.status_code == 201, response.text
    session = fake.sessions[response.json()["data"]["token"]]
    assert session["tags"] == {"end_user_id": "u1", "end_user_email": "ada@example.com"}
