"""Issue 14, point 9: the owner fields are tags too, wherever a connection comes from."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Engine, update
from starlette.testclient import TestClient

from app.connections.legacy_import import import_rows, parse_legacy_csv
from app.connections.model import Attribution
from app.db.database import connected
from app.settings import Settings
from tests.fakes.nango import FakeNango
from tests.rows import CONNECTIONS, add_connection, connection_row
from tests.webhooks.helpers import auth_body, signed_headers


def test_owner_fields_join_the_tags() -> None:
    owner = Attribution(end_user_id="u1", organization_id="o1", tags={"plan": "pro"})
    assert owner.tags_with_owner == {"plan": "pro", "end_user_id": "u1", "organization_id": "o1"}
    # The owner fields are what the tags say (or what endUser said when the tags did not).
    said = Attribution(end_user_id="u1", tags={"end_user_id": "stale"})
    assert said.tags_with_owner == {"end_user_id": "u1"}
    assert Attribution().tags_with_owner == {}


def by_tag(client: TestClient, headers: dict[str, str], key: str, value: str) -> list[str]:
    response = client.get("/v1/connections", params={f"tag[{key}]": value}, headers=headers)
    assert response.status_code == 200, response.text
    return [item["connection_id"] for item in response.json()["data"]]


def test_a_csv_import_is_found_by_tag(
    settings: Settings, sync_engine: Engine, client: TestClient, auth_headers: dict[str, str]
) -> None:
    rows, rejected = parse_legacy_csv(
        "integration_id,connection_id,end_user_id,organization_id\ngithub,user-1,user-1,org-1\n",
        default_environment="prod",
    )
    assert rejected == []

    async def run() -> Any:
        async with connected(settings) as database:
            return await import_rows(database, rows=rows)

    asyncio.run(run())
    assert connection_row(sync_engine, "user-1").tags == {
        "end_user_id": "user-1",
        "organization_id": "org-1",
    }
    assert by_tag(client, auth_headers, "end_user_id", "user-1") == ["user-1"]
    assert by_tag(client, auth_headers, "organization_id", "org-1") == ["user-1"]


def test_a_webhook_with_only_the_deprecated_end_user(
    client: TestClient, auth_headers: dict[str, str]
) -> None:
    body = auth_body(connection_id="c-legacy", end_user={"endUserId": "u9", "organizationId": "o9"})
    assert client.post("/webhooks/nango", content=body, headers=signed_headers(body)).is_success
    assert by_tag(client, auth_headers, "end_user_id", "u9") == ["c-legacy"]
    assert by_tag(client, auth_headers, "organization_id", "o9") == ["c-legacy"]


def test_reconcile_of_a_connection_with_only_an_end_user(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango
) -> None:
    fake_nango.add_connection(
        connection_id="c-old",
        end_user={
            "id": "u7",
            "email": "u7@example.com",
            "display_name": None,
            "tags": None,
            "organization": None,
        },
    )
    assert api.post("/v1/reconcile", headers=auth_headers).status_code == 200
    assert by_tag(api, auth_headers, "end_user_id", "u7") == ["c-old"]
    assert by_tag(api, auth_headers, "end_user_email", "u7@example.com") == ["c-old"]


def test_connections_stored_before_get_owner_tags_from_a_second_import(
    settings: Settings, sync_engine: Engine
) -> None:
    add_connection(sync_engine, connection_id="user-2", end_user_id="user-2")
    with sync_engine.begin() as conn:  # as stored before owner fields were tags too
        conn.execute(update(CONNECTIONS).values(tags={}))
    rows, _ = parse_legacy_csv(
        "integration_id,connection_id,end_user_id,organization_id\ngithub,user-2,user-2,\n",
        default_environment="prod",
    )

    async def run() -> Any:
        async with connected(settings) as database:
            return await import_rows(database, rows=rows)

    assert asyncio.run(run()) == (0, 1)
    assert connection_row(sync_engine, "user-2").tags == {"end_user_id": "user-2"}
