"""Reconciliation over HTTP against the fake Nango: pages, races, idempotency, failures."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, insert, select, update
from sqlmodel import SQLModel
from starlette.testclient import TestClient

from tests.fakes.nango import FakeNango
from tests.nango.clients import reconcile_over_http as reconcile
from tests.rows import CONNECTIONS, add_connection, all_connections, connection_row, history

pytestmark = pytest.mark.usefixtures("small_pages")

RUNS = SQLModel.metadata.tables["reconcile_runs"]
LEASES = SQLModel.metadata.tables["leases"]


def metric(trigger: str, status: str) -> float:
    value = REGISTRY.get_sample_value(
        "nango_registry_reconcile_runs_total", {"trigger": trigger, "status": status}
    )
    return value or 0.0


def test_reconcile_over_pages_creates_updates_and_deletes(
    api: TestClient,
    auth_headers: dict[str, str],
    fake_nango: FakeNango,
    sync_engine: Engine,
    small_pages: int,
) -> None:
    # Nango: new connections attributed by tags, by the deprecated end_user, and not at all.
    for i in range(4):
        fake_nango.add_connection(
            connection_id=f"tagged-{i}", tags={"end_user_id": f"u{i}", "organization_id": "o1"}
        )
    fake_nango.add_connection(
        connection_id="legacy-user",
        end_user={
            "id": "u-legacy",
            "email": "legacy@example.com",
            "display_name": None,
            "organization": {"id": "o-legacy", "display_name": None},
        },
    )
    fake_nango.add_connection(connection_id="nobody", integration_id="slack")
    fake_nango.add_connection(connection_id="broken-new", errors=["auth"])
    # Known here, and changed at Nango.
    fake_nango.add_connection(connection_id="recovered", tags={"end_user_id": "u-r"})
    add_connection(
        sync_engine,
        connection_id="recovered",
        status="auth_error",
        error_type="refresh_token_error",
        end_user_id="u-r",
        tags={"end_user_id": "u-r"},
        updated_at=datetime.now(UTC) - timedelta(hours=1),
    )
    fake_nango.add_connection(
        connection_id="now-broken",
        tags={"end_user_id": "u-b"},
        errors=["auth"],
    )
    add_connection(
        sync_engine,
        connection_id="now-broken",
        end_user_id="u-b",
        tags={"end_user_id": "u-b"},
        updated_at=datetime.now(UTC) - timedelta(hours=1),
    )
    fake_nango.add_connection(connection_id="old-tombstone", tags={"end_user_id": "u-t"})
    add_connection(
        sync_engine,
        connection_id="old-tombstone",
        status="deleted",
        end_user_id="u-t",
        deleted_at=datetime.now(UTC) - timedelta(days=1),
        updated_at=datetime.now(UTC) - timedelta(days=1),
    )
    # Known here, gone at Nango; and one in another environment, which is not ours to judge.
    add_connection(
        sync_engine,
        connection_id="gone",
        end_user_id="u-g",
        updated_at=datetime.now(UTC) - timedelta(hours=1),
    )
    add_connection(
        sync_engine,
        environment="dev",
        connection_id="dev-only",
        updated_at=datetime.now(UTC) - timedelta(hours=1),
    )
    total = len(fake_nango.connections)
    assert total > 3 * small_pages

    succeeded_before = metric("api", "succeeded")
    counts = reconcile(api, auth_headers)

    assert metric("api", "succeeded") == succeeded_before + 1
    assert counts == {
        "seen": total,
        "created": 7,
        "updated": 3,
        "deleted": 1,
        "unattributed": 2,
        "details": 13,  # metadata from the listing for the stored ones, config for every one
    }
    pages = fake_nango.requests_to("GET", "/connections")
    listing = [r for r in pages if "connectionId" not in r.query]
    assert not any("search" in r.query for r in pages)
    assert [r.query["page"] for r in listing] == [str(p) for p in range(len(listing))]
    assert len(listing) == total // small_pages + 1
    rows = all_connections(sync_engine)
    assert rows["prod", "github", "tagged-2"].end_user_id == "u2"
    assert rows["prod", "github", "tagged-2"].organization_id == "o1"
    assert rows["prod", "github", "tagged-2"].tags == {"end_user_id": "u2", "organization_id": "o1"}
    assert rows["prod", "github", "legacy-user"].end_user_id == "u-legacy"
    assert rows["prod", "github", "legacy-user"].organization_id == "o-legacy"
    assert rows["prod", "github", "legacy-user"].end_user_email == "legacy@example.com"
    assert rows["prod", "slack", "nobody"].end_user_id is None
    assert rows["prod", "github", "broken-new"].status == "auth_error"
    assert rows["prod", "github", "broken-new"].error_type == "auth"
    assert rows["prod", "github", "recovered"].status == "active"
    assert rows["prod", "github", "recovered"].error_type is None
    assert rows["prod", "github", "now-broken"].status == "auth_error"
    assert rows["prod", "github", "now-broken"].error_type == "auth"
    assert rows["prod", "github", "old-tombstone"].status == "active"
    assert rows["prod", "github", "old-tombstone"].deleted_at is None
    assert rows["prod", "github", "gone"].status == "deleted"
    assert rows["prod", "github", "gone"].deleted_at is not None
    assert rows["dev", "github", "dev-only"].status == "active"
    assert {e.source for e in history(sync_engine)} == {"reconcile"}

    # A second run finds nothing to change.
    again = reconcile(api, auth_headers)
    assert again == {**counts, "created": 0, "updated": 0, "deleted": 0, "details": 0}
    assert all_connections(sync_engine) == rows

    with sync_engine.connect() as conn:
        runs = conn.execute(select(RUNS).order_by(RUNS.c.id)).all()
    assert [(r.trigger, r.status) for r in runs] == [("api", "succeeded")] * 2
    assert runs[0].counts == counts
    assert all(r.finished_at >= r.started_at for r in runs)


def test_reconcile_racing_webhooks_keeps_newer_local_changes(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    for i in range(7):
        fake_nango.add_connection(connection_id=f"c{i}", tags={"end_user_id": f"u{i}"})
    old = datetime.now(UTC) - timedelta(hours=1)
    # "c0" is on the last page; a webhook will say its credentials broke during the listing.
    add_connection(sync_engine, connection_id="c0", end_user_id="u0", updated_at=old)
    # "c1" is on the last page too; a deletion webhook will arrive during the listing.
    add_connection(sync_engine, connection_id="c1", end_user_id="u1", updated_at=old)

    def webhooks_arrive(page: int) -> None:
        if page != 1:
            return
        now = datetime.now(UTC)
        # A connection made moments ago: Nango's listing (already past page 0) will not show it.
        add_connection(
            sync_engine,
            connection_id="raced-new",
            end_user_id="u-new",
            created_at=now,
            updated_at=now,
        )
        with sync_engine.begin() as conn:
            conn.execute(
                update(CONNECTIONS)
                .where(CONNECTIONS.c.connection_id == "c0")
                .values(status="auth_error", error_type="refresh_failed", updated_at=now)
            )
            conn.execute(
                update(CONNECTIONS)
                .where(CONNECTIONS.c.connection_id == "c1")
                .values(status="deleted", deleted_at=now, updated_at=now)
            )

    fake_nango.on_list_page = webhooks_arrive
    counts = reconcile(api, auth_headers)

    assert counts["deleted"] == 0
    assert connection_row(sync_engine, "raced-new").status == "active"
    assert connection_row(sync_engine, "c0").status == "auth_error"
    assert connection_row(sync_engine, "c0").error_type == "refresh_failed"
    assert connection_row(sync_engine, "c1").status == "deleted"

    # The next run sees the world as it is now: raced-new is not at Nango, so it goes.
    fake_nango.on_list_page = None
    later = reconcile(api, auth_headers)
    assert later["deleted"] == 1
    assert connection_row(sync_engine, "raced-new").status == "deleted"


def test_deletion_at_nango_during_the_listing_is_no_false_deletion(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    made = [fake_nango.add_connection(connection_id=f"c{i}") for i in range(6)]
    old = datetime.now(UTC) - timedelta(hours=1)
    for connection in made:
        add_connection(sync_engine, connection_id=connection.connection_id, updated_at=old)

    def newest_deleted_at_nango(page: int) -> None:
        # Offset paging: removing a row from page 0 shifts the first row of page 1 onto page 0,
        # past the listing. That row must not be taken for deleted.
        if page == 0 and made[-1] in fake_nango.connections:
            fake_nango.connections.remove(made[-1])

    fake_nango.on_list_page = newest_deleted_at_nango
    counts = reconcile(api, auth_headers)
    assert counts["seen"] == 5
    assert counts["deleted"] == 0
    rows = all_connections(sync_engine)
    assert all(row.status == "active" for row in rows.values())
    assert len(fake_nango.requests_to("GET", "/connections")) > 2  # the confirming search

    fake_nango.on_list_page = None
    assert reconcile(api, auth_headers)["deleted"] == 1
    assert connection_row(sync_engine, made[-1].connection_id).status == "deleted"


def test_an_empty_listing_deletes_nothing(
    api: TestClient, auth_headers: dict[str, str], sync_engine: Engine
) -> None:
    old = datetime.now(UTC) - timedelta(hours=1)
    add_connection(sync_engine, connection_id="a", updated_at=old)
    add_connection(sync_engine, connection_id="b", updated_at=old)
    counts = reconcile(api, auth_headers)
    assert counts == {
        "seen": 0,
        "created": 0,
        "updated": 0,
        "deleted": 0,
        "unattributed": 0,
        "details": 0,
    }
    assert {row.status for row in all_connections(sync_engine).values()} == {"active"}


def test_nango_failing_mid_listing_deletes_nothing_and_records_the_failure(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    for i in range(5):
        fake_nango.add_connection(connection_id=f"c{i}")
    add_connection(
        sync_engine, connection_id="gone", updated_at=datetime.now(UTC) - timedelta(hours=1)
    )

    def fail_from_now_on(page: int) -> None:
        fake_nango.fail_next(10, status=502)

    fake_nango.on_list_page = fail_from_now_on
    response = api.post("/v1/reconcile", headers=auth_headers)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "nango_unavailable"
    assert connection_row(sync_engine, "gone").status == "active"
    with sync_engine.connect() as conn:
        run = conn.execute(select(RUNS)).one()
        lease = conn.execute(select(LEASES)).all()
    assert (run.trigger, run.status, run.error) == ("api", "failed", "NangoUnavailable")
    assert metric("api", "failed") >= 1
    assert lease == []  # released, so the next run can start


def test_reconcile_while_another_runs_is_409(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    with sync_engine.begin() as conn:
        conn.execute(
            insert(LEASES).values(
                name="reconcile",
                holder="other-instance",
                expires_at=datetime.now(UTC) + timedelta(minutes=1),
            )
        )
    response = api.post("/v1/reconcile", headers=auth_headers)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "reconcile_running"
    assert fake_nango.requests == []


def test_a_connect_session_completed_at_nango_is_attributed_by_reconcile(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    response = api.post(
        "/v1/connect-sessions",
        headers=auth_headers,
        json={"end_user_id": "user-5", "organization_id": "org-5", "tags": {"plan": "pro"}},
    )
    assert response.status_code == 201
    made = fake_nango.complete_session(response.json()["token"], integration_id="hubspot")
    assert reconcile(api, auth_headers)["created"] == 1
    row = connection_row(sync_engine, made.connection_id, "hubspot")
    assert (row.end_user_id, row.organization_id, row.tags["plan"]) == ("user-5", "org-5", "pro")


def test_the_schedule_runs_in_lifespan_only_when_configured(make_client: Any) -> None:
    def schedules(client: TestClient) -> list[asyncio.Task[None]]:
        background = client.app.state.registry.background  # type: ignore[attr-defined]
        return [task for task in background if task.get_name() == "reconcile-schedule"]

    [task] = schedules(make_client(reconcile_interval_seconds=60))
    assert not task.done()
    assert schedules(make_client()) == []
    assert schedules(make_client(reconcile_interval_seconds=60, nango_secret_key=None)) == []
