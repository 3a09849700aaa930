"""The change feed is written by the store: every source publishes, in the same transaction."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from app.connections.feed import EventType, event_types
from app.connections.legacy_import import ImportRow, import_rows
from app.db.database import connected
from app.settings import Settings
from tests.fakes.nango import FakeNango
from tests.nango.clients import reconcile_over_http
from tests.rows import add_connection, feed, feed_types
from tests.webhooks.helpers import auth_body as auth
from tests.webhooks.helpers import signed_headers, sync_body

CREATED, ATTRIBUTED = EventType.CREATED.value, EventType.ATTRIBUTED.value
AUTH_ERROR, RECOVERED = EventType.AUTH_ERROR.value, EventType.RECOVERED.value
DELETED, RESTORED = EventType.DELETED.value, EventType.RESTORED.value
METADATA_UPDATED = EventType.METADATA_UPDATED.value


def post(client: TestClient, body: bytes) -> str:
    response = client.post("/webhooks/nango", content=body, headers=signed_headers(body))
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"action": "creation", "from_status": None, "to_status": "active"}, [CREATED]),
        (
            {"action": "refresh", "from_status": None, "to_status": "auth_error"},
            [CREATED, AUTH_ERROR],
        ),
        ({"action": "deletion", "from_status": None, "to_status": "deleted"}, [DELETED]),
        ({"action": "refresh", "from_status": "active", "to_status": "auth_error"}, [AUTH_ERROR]),
        ({"action": "override", "from_status": "auth_error", "to_status": "active"}, [RECOVERED]),
        ({"action": "refresh", "from_status": "auth_error", "to_status": "auth_error"}, []),
        ({"action": "restore", "from_status": "deleted", "to_status": "active"}, [RESTORED]),
        ({"action": "deletion", "from_status": "active", "to_status": "deleted"}, [DELETED]),
        ({"action": "tags", "from_status": None, "to_status": None}, [ATTRIBUTED]),
        ({"action": "attribution", "from_status": None, "to_status": None}, [ATTRIBUTED]),
        (
            {
                "action": "metadata_merge",
                "from_status": None,
                "to_status": "active",
                "detail": {"changed": ["metadata"]},
            },
            ["connection.metadata_updated"],
        ),
        (
            {
                "action": "refresh",
                "from_status": "auth_error",
                "to_status": "active",
                "detail": {"changed": ["owner", "connection_config"]},
            },
            [RECOVERED, ATTRIBUTED, "connection.metadata_updated"],
        ),
        (
            {
                "action": "update",
                "from_status": None,
                "to_status": "active",
                "detail": {"changed": ["end_user_id"]},
            },
            [ATTRIBUTED],
        ),
        ({"action": "creation", "from_status": "active", "to_status": "active"}, []),
        (
            {
                "action": "refresh",
                "from_status": "active",
                "to_status": "active",
                "_owner_changed": True,
            },
            [ATTRIBUTED],
        ),
        (
            {"action": "sync", "from_status": None, "to_status": None, "success": False},
            ["connection.sync_failed"],
        ),
    ],
)
def test_what_a_history_row_means_to_a_consumer(row: dict[str, Any], expected: list[str]) -> None:
    assert event_types({"success": None, **row}) == expected


def test_webhooks_publish_each_change_once_with_the_connection_as_served(
    client: TestClient, auth_headers: dict[str, str], sync_engine: Engine
) -> None:
    tags = {"end_user_id": "u1", "organization_id": "o1"}
    assert post(client, auth(tags=tags)) == "applied"
    assert post(client, auth(tags=tags)) == "duplicate"  # a duplicate delivery appends nothing
    post(client, auth(operation="refresh", success=False))
    post(
        client,
        auth(operation="refresh", success=False, error={"type": "again", "description": "x"}),
    )
    post(client, auth(operation="override", tags={**tags, "end_user_email": "u1@example.com"}))
    post(client, sync_body(success=True))  # a good sync is not news
    post(client, sync_body(success=False))
    post(client, auth(operation="creation", tags={**tags, "plan": "pro"}))  # late: new owner tags
    post(client, auth(operation="deletion"))
    assert feed_types(sync_engine) == [
        (CREATED, "webhook", "conn-1"),
        (AUTH_ERROR, "webhook", "conn-1"),
        (RECOVERED, "webhook", "conn-1"),
        (ATTRIBUTED, "webhook", "conn-1"),
        ("connection.sync_failed", "webhook", "conn-1"),
        (ATTRIBUTED, "webhook", "conn-1"),
        (DELETED, "webhook", "conn-1"),
    ]
    rows = feed(sync_engine)
    assert [row.id for row in rows] == sorted(row.id for row in rows)
    assert all(row.delivery_id is not None for row in rows)
    assert (rows[0].end_user_id, rows[0].organization_id) == ("u1", "o1")
    assert (rows[0].environment, rows[0].integration_id) == ("prod", "github")
    served = client.get("/v1/connections/conn-1", headers=auth_headers).json()["data"]
    assert rows[-1].connection == served  # the object of GET /v1/connections/{id}, as it is now
    assert rows[0].connection["status"] == "active"
    assert rows[1].connection["error"]["type"] == "refresh_token_external_error"


def test_reconcile_publishes_creations_restorations_and_owners(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="new", tags={"end_user_id": "u1"})
    fake_nango.add_connection(connection_id="back", tags={"end_user_id": "u2"})
    fake_nango.add_connection(connection_id="owned", tags={"end_user_id": "u3"})
    add_connection(sync_engine, connection_id="back", status="deleted")
    add_connection(sync_engine, connection_id="owned")
    add_connection(sync_engine, connection_id="gone")
    reconcile_over_http(api, auth_headers)
    # Connection details (the listing's metadata, fetched configuration) are tested with them
    # (tests/connections/test_details.py).
    published = [row for row in feed_types(sync_engine) if row[0] != METADATA_UPDATED]
    assert sorted(published) == [
        (ATTRIBUTED, "reconcile", "back"),
        (ATTRIBUTED, "reconcile", "owned"),
        (CREATED, "reconcile", "new"),
        (DELETED, "reconcile", "gone"),
        (RESTORED, "reconcile", "back"),
    ]
    assert all(row.delivery_id is None for row in feed(sync_engine))


def test_api_deletion_and_import_publish(
    api: TestClient,
    auth_headers: dict[str, str],
    fake_nango: FakeNango,
    sync_engine: Engine,
    settings: Settings,
) -> None:
    fake_nango.add_connection(connection_id="conn-1")
    add_connection(sync_engine, connection_id="conn-1")
    assert api.delete("/v1/connections/conn-1", headers=auth_headers).status_code == 200

    async def run_import() -> None:
        async with connected(settings) as database:
            rows = [
                ImportRow(1, "prod", "github", "legacy-1", "u9", None),
                ImportRow(2, "prod", "github", "conn-1", "u9", "o9"),
            ]
            await import_rows(database, rows=rows)

    asyncio.run(run_import())
    assert feed_types(sync_engine) == [
        (DELETED, "api", "conn-1"),
        (CREATED, "import", "legacy-1"),
        (ATTRIBUTED, "import", "conn-1"),
    ]


@pytest.mark.anyio
async def test_commits_that_append_are_announced_after_commit_in_one_notify(
    settings: Settings, sync_engine: Engine, client: TestClient
) -> None:
    """A NOTIFY inside every writing transaction serialized the commits (Postgres's global
    notify lock); the database layer announces committed appends itself, at most one NOTIFY
    per FEED_NOTIFY_EVERY_SECONDS, and a command's last ones before it closes."""
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("NOTIFY is Postgres's")
    from app.db.database import FEED_CHANNEL, FEED_NOTIFY_EVERY_SECONDS, postgres_conninfo

    conninfo = postgres_conninfo(settings.database_url)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as listener:
        await listener.execute(f"LISTEN {FEED_CHANNEL}")

        async def heard(seconds: float) -> int:
            return len([n async for n in listener.notifies(timeout=seconds)])

        # A webhook through the receiver: its commit is announced.
        assert post(client, auth(connection_id="notify")) == "applied"
        assert await heard(0.5) == 1
        assert len(feed(sync_engine)) == 1

        async with connected(settings) as database:
            # Twenty commits at once: one NOTIFY (two if they straddle its moment).
            async def append() -> None:
                async with database.transaction() as tx:
                    tx.feed_appended()

            await asyncio.gather(*(append() for _ in range(20)))
            await asyncio.sleep(FEED_NOTIFY_EVERY_SECONDS * 5)
            assert 1 <= await heard(0.3) <= 2

        async with connected(settings) as database:  # as a command does
            async with database.transaction() as tx:
                tx.feed_appended()
            with contextlib.suppress(RuntimeError):
                async with database.transaction() as tx:
                    tx.feed_appended()
                    raise RuntimeError("rolled back: nothing to announce")
        # Announced before the command's database closed, not lost with it.
        assert await heard(0.2) == 1
        async with connected(settings) as database:
            with contextlib.suppress(RuntimeError):
                async with database.transaction() as tx:
                    tx.feed_appended()
                    raise RuntimeError("rolled back")
        assert await heard(0.2) == 0


@pytest.mark.anyio
async def test_this_process_hears_of_each_commit_that_appended_and_of_no_other(
    settings: Settings, sync_engine: Engine
) -> None:
    """Whatever the writer (the receiver, the API, reconcile, the console), a committed append
    wakes this process's waiters at once, on both databases."""
    heard: list[str] = []
    async with connected(settings) as database:
        database.on_feed_commit = lambda: heard.append("commit")
        async with database.transaction() as tx:
            tx.feed_appended()
        assert heard == ["commit"]
        async with database.transaction():
            pass  # wrote nothing to the feed
        with contextlib.suppress(RuntimeError):
            async with database.transaction() as tx:
                tx.feed_appended()
                raise RuntimeError("rolled back")
        assert heard == ["commit"]
