"""A connection's configuration and metadata: fetched after a webhook, by reconcile and on
refresh; metadata, owner and tag writes through Nango; every change in the history; and no
credential anywhere (app.connections.details, app.connections.detail_fetches, their routes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session, SQLModel
from starlette.testclient import TestClient

from app.api.keys import hash_key
from app.connections import detail_fetches
from app.connections.details import ConnectionUpdate
from app.db.tables import ApiKeyTable
from app.state import AppState
from tests import secret_scan
from tests.conftest import TABLES
from tests.fakes.nango import CREDENTIAL_MARKER, FakeNango
from tests.nango.clients import reconcile_over_http
from tests.rows import add_connection, connection_row, feed_types, history
from tests.webhooks.helpers import auth_body, signed_headers

secret_scan.register_secret(CREDENTIAL_MARKER)

HOUR_AGO = datetime.now(UTC) - timedelta(hours=1)
# What a company keeps at Nango for a Zendesk-like connection, secrets included.
CONFIG = {
    "subdomain": "acme",
    "instance_url": "https://acme.example.com",
    "client_secret": CREDENTIAL_MARKER + "client-secret",
    "oauth": {"scope": "read", "refreshToken": CREDENTIAL_MARKER + "nested-token"},
    "PrivateKey": CREDENTIAL_MARKER + "private-key",
    "userPassword": CREDENTIAL_MARKER + "password",
    "api_credentials": {"key": CREDENTIAL_MARKER + "credential"},
}
KEPT_CONFIG = {
    "subdomain": "acme",
    "instance_url": "https://acme.example.com",
    "oauth": {"scope": "read"},
}
METADATA = {"field_mapping": {"email": "Email__c"}, "filters": ["open"]}


def _state(client: TestClient) -> AppState:
    state: AppState = client.app.state.registry  # type: ignore[attr-defined]
    return state


def settle(client: TestClient) -> None:
    """Wait for the background fetches the app has started."""
    details = _state(client).details
    assert details is not None
    assert client.portal is not None
    client.portal.call(details.idle)


def post_webhook(client: TestClient, body: bytes) -> None:
    response = client.post("/webhooks/nango", content=body, headers=signed_headers(body))
    assert response.status_code == 200, response.text


def actions(engine: Engine, connection_id: str) -> list[tuple[str, str]]:
    pk = connection_row(engine, connection_id).id
    return [(e.source, e.action) for e in history(engine) if e.connection_pk == pk]


# After a webhook ----------------------------------------------------------------------------


def test_a_creation_webhook_brings_config_and_metadata_in_the_background(
    make_client: Any, fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="zd-1", connection_config=CONFIG, metadata=METADATA)
    api = make_client(connection_details_retry_seconds=0.01)
    post_webhook(api, auth_body(connection_id="zd-1", tags={"end_user_id": "u1"}))
    settle(api)

    row = connection_row(sync_engine, "zd-1")
    assert (row.connection_config, row.metadata) == (KEPT_CONFIG, METADATA)
    assert actions(sync_engine, "zd-1") == [("webhook", "creation"), ("webhook", "details")]
    gets = fake_nango.requests_to("GET", "/connections/zd-1")
    assert [r.query for r in gets] == [{"provider_config_key": "github"}]


def test_the_fetch_is_retried_and_webhooks_of_other_kinds_fetch_nothing(
    make_client: Any, fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="c1", connection_config={"region": "eu"})
    api = make_client(connection_details_retry_seconds=0.01, nango_max_retries=0)
    fake_nango.fail_next(2)  # two attempts fail at Nango, the third succeeds
    post_webhook(api, auth_body(connection_id="c1"))
    settle(api)
    assert connection_row(sync_engine, "c1").connection_config == {"region": "eu"}
    assert len(fake_nango.requests_to("GET", "/connections/c1")) == 3

    # A refresh failure, a failed override and another environment's creation: no fetch.
    post_webhook(api, auth_body(connection_id="c1", operation="refresh", success=False))
    post_webhook(api, auth_body(connection_id="c1", operation="override", success=False))
    post_webhook(api, auth_body(connection_id="c2", environment="dev"))
    settle(api)
    assert len(fake_nango.requests_to("GET", "/connections/c1")) == 3
    assert fake_nango.requests_to("GET", "/connections/c2") == []


def test_a_fetch_that_keeps_failing_is_left_to_reconcile(
    make_client: Any, fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="c1", connection_config={"region": "eu"})
    api = make_client(
        connection_details_retry_seconds=0.01, connection_details_attempts=2, nango_max_retries=0
    )
    fake_nango.fail_next(2)
    post_webhook(api, auth_body(connection_id="c1", operation="override"))
    settle(api)
    # Both attempts were made, and failed: nothing stored, nothing more asked.
    assert len(fake_nango.requests_to("GET", "/connections/c1")) == 2
    assert connection_row(sync_engine, "c1").connection_config is None


def test_shutdown_cancels_fetches_still_waiting(
    make_client: Any, fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="c1")
    api = make_client(connection_details_retry_seconds=300, nango_max_retries=0)
    fake_nango.fail_next(1)
    post_webhook(api, auth_body(connection_id="c1"))
    details = _state(api).details
    assert details is not None
    assert details.pending == 1
    api.__exit__(None, None, None)  # the lifespan ends: the fetch waiting 300 s is cancelled
    assert details.pending == 0
    assert not details.request(environment="prod", integration_id="github", connection_id="c9")


# Reconcile ----------------------------------------------------------------------------------


def test_reconcile_fills_in_what_is_missing_from_the_listing_and_one_get_each(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="new", connection_config=CONFIG, metadata=METADATA)
    fake_nango.add_connection(connection_id="known", connection_config={"region": "us"})
    fake_nango.add_connection(connection_id="done", connection_config={"region": "eu"})
    add_connection(sync_engine, connection_id="known", updated_at=HOUR_AGO)
    add_connection(
        sync_engine,
        connection_id="done",
        updated_at=HOUR_AGO,
        connection_config={"region": "eu"},
        metadata={"stale": True},
    )

    counts = reconcile_over_http(api, auth_headers)

    # Metadata from the listing for "known" and "done", configuration fetched for two.
    assert (counts["created"], counts["details"]) == (1, 4)
    new, known, done = (connection_row(sync_engine, c) for c in ("new", "known", "done"))
    assert (new.connection_config, new.metadata) == (KEPT_CONFIG, METADATA)
    assert (known.connection_config, known.metadata) == ({"region": "us"}, {})
    # The listing says "done" has no metadata any more; its config was known: no GET.
    assert (done.connection_config, done.metadata) == ({"region": "eu"}, {})
    assert fake_nango.requests_to("GET", "/connections/done") == []
    assert actions(sync_engine, "known") == [("reconcile", "details"), ("reconcile", "details")]
    assert actions(sync_engine, "done") == [("reconcile", "details")]
    # The next run has nothing left to fetch.
    assert reconcile_over_http(api, auth_headers)["details"] == 0


def test_reconcile_fetches_a_bounded_number_per_run(
    make_client: Any, auth_headers: dict[str, str], fake_nango: FakeNango
) -> None:
    for index in range(3):
        fake_nango.add_connection(connection_id=f"c{index}")
    api = make_client(reconcile_details_per_run=2)
    assert reconcile_over_http(api, auth_headers)["details"] == 2
    assert reconcile_over_http(api, auth_headers)["details"] == 1


def test_reconcile_stops_fetching_when_nango_refuses_and_still_succeeds(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="c1")
    fake_nango.on_list_page = lambda page: fake_nango.fail_next(1, status=403, code="forbidden")
    counts = reconcile_over_http(api, auth_headers)
    assert (counts["created"], counts["details"]) == (1, 0)
    assert connection_row(sync_engine, "c1").connection_config is None


# Refresh ------------------------------------------------------------------------------------


def test_refresh_rereads_status_owner_config_and_metadata(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(
        connection_id="c1",
        tags={"end_user_id": "u1", "plan": "pro"},
        errors=["auth"],
        connection_config=CONFIG,
        metadata=METADATA,
    )
    add_connection(sync_engine, connection_id="c1", updated_at=HOUR_AGO, tags={"team": "a"})

    response = api.post("/v1/connections/c1/refresh", headers=auth_headers)

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["status"], data["error"]["type"]) == ("auth_error", "auth")
    assert data["end_user"]["id"] == "u1"
    assert data["tags"] == {"team": "a", "end_user_id": "u1", "plan": "pro"}
    assert (data["connection_config"], data["metadata"]) == (KEPT_CONFIG, METADATA)
    [event] = [e for e in history(sync_engine) if e.action == "refresh"]
    assert (event.source, event.from_status, event.to_status) == ("api", "active", "auth_error")
    assert event.detail == {
        "changed": ["status", "owner", "connection_config", "metadata"],
    }
    assert [kind for kind, _, _ in feed_types(sync_engine)] == [
        "connection.auth_error",
        "connection.attributed",
        "connection.metadata_updated",
    ]
    # Nothing new: nothing recorded.
    assert api.post("/v1/connections/c1/refresh", headers=auth_headers).status_code == 200
    assert len([e for e in history(sync_engine) if e.action == "refresh"]) == 1


def test_refresh_marks_deleted_what_nango_lacks_and_restores_what_it_has(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    add_connection(sync_engine, connection_id="gone")
    response = api.post("/v1/connections/gone/refresh", headers=auth_headers)
    assert response.json()["data"]["status"] == "deleted"

    fake_nango.add_connection(connection_id="back")
    add_connection(sync_engine, connection_id="back", status="deleted", deleted_at=HOUR_AGO)
    data = api.post("/v1/connections/back/refresh", headers=auth_headers).json()["data"]
    assert (data["status"], data["deleted_at"]) == ("active", None)
    assert actions(sync_engine, "back") == [("api", "refresh")]


# Metadata -----------------------------------------------------------------------------------


def test_metadata_merge_and_replace_at_nango_and_here(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    at_nango = fake_nango.add_connection(connection_id="c1", metadata={"a": 1, "b": {"x": 1}})
    add_connection(sync_engine, connection_id="c1")  # metadata not known here yet
    url = "/v1/connections/c1/metadata"

    merged = api.patch(url, headers=auth_headers, json={"metadata": {"b": {"y": 2}, "c": 3}})
    assert merged.status_code == 200, merged.text
    expected = {"a": 1, "b": {"y": 2}, "c": 3}  # top-level keys, as Nango merges
    assert merged.json()["data"]["metadata"] == expected == at_nango.metadata
    [patch] = fake_nango.requests_to("PATCH", "/connections/metadata")
    assert patch.body == {
        "connection_id": "c1",
        "provider_config_key": "github",
        "metadata": {"b": {"y": 2}, "c": 3},
    }

    again = api.patch(url, headers=auth_headers, json={"metadata": {"d": 4}})
    assert again.json()["data"]["metadata"] == {**expected, "d": 4} == at_nango.metadata
    replaced = api.put(url, headers=auth_headers, json={"metadata": {"only": True}})
    assert replaced.json()["data"]["metadata"] == {"only": True} == at_nango.metadata
    assert actions(sync_engine, "c1") == [
        ("api", "metadata_merge"),
        ("api", "metadata_merge"),
        ("api", "metadata_replace"),
    ]
    assert connection_row(sync_engine, "c1").metadata == {"only": True}
    # Each write is published to the change feed, with the connection as served.
    assert feed_types(sync_engine) == [("connection.metadata_updated", "api", "c1")] * 3


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"metadata": []}, 400, "invalid_body"),
        ({"metadata": {}, "extra": 1}, 400, "invalid_body"),
        ({}, 400, "invalid_body"),
    ],
)
def test_metadata_bodies_are_checked_before_nango(
    api: TestClient,
    auth_headers: dict[str, str],
    fake_nango: FakeNango,
    sync_engine: Engine,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    add_connection(sync_engine, connection_id="c1")
    response = api.put("/v1/connections/c1/metadata", headers=auth_headers, json=body)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert fake_nango.requests == []


def test_writes_to_a_connection_nango_lacks_or_a_deleted_one_are_refused(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    add_connection(sync_engine, connection_id="missing")
    add_connection(sync_engine, connection_id="tomb", status="deleted", deleted_at=HOUR_AGO)
    for method, path, body in (
        ("PATCH", "/metadata", {"metadata": {"a": 1}}),
        ("PUT", "/metadata", {"metadata": {"a": 1}}),
        ("PATCH", "", {"tags": {"plan": "pro"}}),
    ):
        missing = api.request(
            method, f"/v1/connections/missing{path}", headers=auth_headers, json=body
        )
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "unknown_at_nango")
        tomb = api.request(method, f"/v1/connections/tomb{path}", headers=auth_headers, json=body)
        assert (tomb.status_code, tomb.json()["error"]["code"]) == (409, "deleted")
    assert not [e for e in history(sync_engine)]


def test_writes_need_a_full_access_key(
    api: TestClient, sync_engine: Engine, fake_nango: FakeNango
) -> None:
    secret = "read-only-key-0123456789abcdef"
    with Session(sync_engine) as session:
        session.add(ApiKeyTable(name="dashboard", key_hash=hash_key(secret), read_only=True))
        session.commit()
    add_connection(sync_engine, connection_id="c1")
    headers = {"Authorization": f"Bearer {secret}"}
    for method, path in (("POST", "/refresh"), ("PUT", "/metadata"), ("PATCH", "")):
        response = api.request(method, f"/v1/connections/c1{path}", headers=headers, json={})
        assert response.status_code == 403, response.text
    assert fake_nango.requests == []


# Owner and tags -----------------------------------------------------------------------------


def test_an_operator_attributes_a_connection_and_the_next_reconcile_keeps_it(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    at_nango = fake_nango.add_connection(connection_id="c1", tags={"team": "a", "old": "x"})
    add_connection(
        sync_engine, connection_id="c1", updated_at=HOUR_AGO, tags={"team": "a", "old": "x"}
    )
    body = {
        "end_user_id": "u7",
        "end_user_email": "u7@example.com",
        "organization_id": "o7",
        "tags": {"Plan": "pro", "old": None},
    }
    response = api.patch("/v1/connections/c1", headers=auth_headers, json=body)

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["end_user"]["id"], data["organization"]["id"]) == ("u7", "o7")
    sent = {
        "team": "a",
        "end_user_id": "u7",
        "end_user_email": "u7@example.com",
        "organization_id": "o7",
        "plan": "pro",
    }
    [patch] = fake_nango.requests_to("PATCH", "/connections/c1")
    assert patch.body == {"tags": sent}  # the whole set: Nango replaces the tags
    assert at_nango.tags == sent == data["tags"]
    [event] = [e for e in history(sync_engine) if e.action == "update"]
    assert event.detail == {"changed": ["end_user_id", "end_user_email", "organization_id", "tags"]}
    assert feed_types(sync_engine) == [("connection.attributed", "api", "c1")]

    reconcile_over_http(api, auth_headers)
    assert connection_row(sync_engine, "c1").end_user_id == "u7"
    owner = api.get("/v1/connections", headers=auth_headers, params={"end_user_id": "u7"})
    assert [c["connection_id"] for c in owner.json()["data"]] == ["c1"]
    tagged = api.get("/v1/connections", headers=auth_headers, params={"tag[plan]": "pro"})
    assert [c["connection_id"] for c in tagged.json()["data"]] == ["c1"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"tags": {}}, "body"),
        ({"end_user_email": "not-an-email"}, "end_user_email"),
        ({"tags": {"end_user_id": "u"}}, "tags"),
        ({"tags": {"Team": "a", "team": "b"}}, "tags"),
        ({"tags": {"1bad": "x"}}, "tags"),
        ({"tags": {"ok": ""}}, "tags"),
        ({"end_user_id": ""}, "end_user_id"),
    ],
)
def test_update_bodies_are_checked_before_nango(
    api: TestClient,
    auth_headers: dict[str, str],
    fake_nango: FakeNango,
    sync_engine: Engine,
    body: dict[str, Any],
    field: str,
) -> None:
    add_connection(sync_engine, connection_id="c1")
    response = api.patch("/v1/connections/c1", headers=auth_headers, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"]["errors"][0]["field"].startswith(field)
    assert fake_nango.requests == []


def test_more_than_ten_tags_in_all_are_refused_before_nango(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    stored = {f"t{i}": "v" for i in range(8)} | {"bad key": "kept here, not sent"}
    add_connection(sync_engine, connection_id="c1", end_user_id="u1", tags=stored)
    body = {"tags": {"t8": "v", "t9": "v"}}
    response = api.patch("/v1/connections/c1", headers=auth_headers, json=body)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "too_many_tags")
    assert fake_nango.requests == []


def test_a_stored_email_nango_would_refuse_is_not_sent(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="c1")
    add_connection(sync_engine, connection_id="c1", end_user_email="legacy-import")
    response = api.patch("/v1/connections/c1", headers=auth_headers, json={"end_user_id": "u1"})
    assert response.status_code == 200, response.text
    [patch] = fake_nango.requests_to("PATCH", "/connections/c1")
    assert patch.body == {"tags": {"end_user_id": "u1"}}


# Credentials --------------------------------------------------------------------------------


def test_no_credential_reaches_a_table_an_answer_or_a_log(
    make_client: Any, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    """The fake answers credentials (tokens) and secret-named config keys, all marked: after a
    webhook's fetch, a reconcile and a refresh, no table, answer or log line holds one."""
    api = make_client(connection_details_retry_seconds=0.01)
    first = fake_nango.add_connection(connection_id="c1", connection_config=CONFIG)
    fake_nango.add_connection(connection_id="c2", connection_config=CONFIG, metadata=METADATA)
    assert first.credentials["access_token"].startswith(CREDENTIAL_MARKER)
    before = len(secret_scan.CAPTURE.chunks)

    post_webhook(api, auth_body(connection_id="c1"))
    settle(api)
    answers = [reconcile_over_http(api, auth_headers)]
    for connection_id in ("c1", "c2"):
        refreshed = api.post(f"/v1/connections/{connection_id}/refresh", headers=auth_headers)
        answers.append(refreshed.json())
        answers.append(api.get(f"/v1/connections/{connection_id}", headers=auth_headers).json())
        events_page = api.get(f"/v1/connections/{connection_id}/events", headers=auth_headers)
        answers.append(events_page.json())

    assert connection_row(sync_engine, "c2").connection_config == KEPT_CONFIG
    assert CREDENTIAL_MARKER not in str(answers)
    with sync_engine.connect() as conn:
        for table in [*TABLES, *(t for t in SQLModel.metadata.tables if t not in TABLES)]:
            dump = str(conn.execute(text(f"SELECT * FROM {table}")).all())  # noqa: S608
            assert CREDENTIAL_MARKER not in dump, table
    assert len(fake_nango.requests_to("GET", "/connections/c1")) >= 2  # the webhook's, refresh
    logged = [chunk for _, chunk in secret_scan.CAPTURE.chunks[before:]]
    assert logged
    assert not [chunk for chunk in logged if CREDENTIAL_MARKER in chunk]


def test_fetch_requests_are_bounded_and_unknown_connections_are_left_alone(
    make_client: Any, fake_nango: FakeNango, sync_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = make_client(connection_details_retry_seconds=0.01)
    details = _state(api).details
    assert details is not None
    # A creation Nango does not know (any more): nothing to store, nothing recorded.
    post_webhook(api, auth_body(connection_id="vanished"))
    settle(api)
    assert actions(sync_engine, "vanished") == [("webhook", "creation")]
    # Not stored here: the fetch ends without calling Nango.
    assert api.portal is not None
    key = {"environment": "prod", "integration_id": "github", "connection_id": "nowhere"}
    assert api.portal.call(lambda: _request(details, key))
    settle(api)
    assert fake_nango.requests_to("GET", "/connections/nowhere") == []
    # Beyond the bound, requests are dropped (reconcile fills them in).
    monkeypatch.setattr(detail_fetches, "MAX_PENDING", 0)
    assert not api.portal.call(lambda: _request(details, key))


async def _request(details: detail_fetches.DetailFetches, key: dict[str, str]) -> bool:
    return details.request(**key)


def test_an_update_names_owner_fields_only() -> None:
    with pytest.raises(ValueError, match="not owner fields"):
        ConnectionUpdate(owner={"plan": "pro"})
