"""Reconciliation against a fake Nango as strict as the real one: typed errors, the exact
deletion check, and Nango's rate limit."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlmodel import SQLModel
from starlette.testclient import TestClient

from app.connections.reconcile import reconcile
from app.db.database import Database
from tests.fakes.nango import ErrorType, FakeNango
from tests.nango.clients import client_for
from tests.nango.clients import reconcile_over_http as run_reconcile
from tests.rows import add_connection, all_connections, connection_row, history

HOUR_AGO = datetime.now(UTC) - timedelta(hours=1)


def test_sync_errors_leave_the_status_alone_and_auth_keeps_the_stored_type(
    api: TestClient, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    def both(connection_id: str, errors: list[ErrorType], **stored: object) -> None:
        fake_nango.add_connection(connection_id=connection_id, errors=errors)
        add_connection(sync_engine, connection_id=connection_id, updated_at=HOUR_AGO, **stored)

    described = {
        "status": "auth_error",
        "error_type": "refresh_token_external_error",
        "error_description": "invalid_grant",
        "error_since": HOUR_AGO,
    }
    both("syncing-badly", ["sync"])
    both("described", ["auth", "sync"], **described)
    both("healed", ["sync"], **described)
    both("newly-broken", ["auth"])
    both("untyped", ["auth"], status="auth_error", error_since=HOUR_AGO)
    fake_nango.add_connection(connection_id="new-syncing-badly", errors=["sync"])
    fake_nango.add_connection(connection_id="new-broken", errors=["auth"])

    counts = run_reconcile(api, auth_headers)

    assert (counts["created"], counts["updated"], counts["deleted"]) == (2, 3, 0)
    rows = {key[2]: row for key, row in all_connections(sync_engine).items()}
    for name in ("syncing-badly", "new-syncing-badly", "healed"):
        assert (rows[name].status, rows[name].error_type) == ("active", None), name
    assert rows["described"].status == "auth_error"
    assert rows["described"].error_type == "refresh_token_external_error"
    assert rows["described"].error_description == "invalid_grant"
    described_events = [e for e in history(sync_engine) if e.connection_pk == rows["described"].id]
    assert [e.action for e in described_events] == ["details", "details"]  # metadata, config
    for name in ("newly-broken", "untyped", "new-broken"):
        assert (rows[name].status, rows[name].error_type) == ("auth_error", "auth"), name
    assert rows["untyped"].error_since == rows["described"].error_since
    # Nango's entries are kept in the history of what reconcile changed.
    listed = {e["type"] for e in history(sync_engine) for e in e.detail.get("nango_errors", [])}
    assert listed == {"sync", "auth"}

    assert run_reconcile(api, auth_headers) == {
        **counts,
        "created": 0,
        "updated": 0,
        "details": 0,
    }


def test_a_legacy_id_that_search_over_matches_is_not_tombstoned(
    api: TestClient,
    auth_headers: dict[str, str],
    fake_nango: FakeNango,
    sync_engine: Engine,
    small_pages: int,
) -> None:
    # A legacy ID chosen under the public-key flow, then 102 newer connections that Nango's
    # search for it also matches ("_" is a wildcard): its own row is not among the first 100.
    fake_nango.add_connection(connection_id="user_1")
    add_connection(sync_engine, connection_id="user_1", end_user_id="u1", updated_at=HOUR_AGO)
    newer = [fake_nango.add_connection(connection_id=f"user-1-{i}") for i in range(102)]
    total = len(fake_nango.connections)
    # "user_1" is the oldest, the first row of the last page; a deletion at Nango while the
    # page before it is served shifts it onto that page, past the listing.
    assert len(newer) % small_pages == 0
    last_page = len(newer) // small_pages

    def deleted_meanwhile(page: int) -> None:
        if page == last_page - 1 and newer[-1] in fake_nango.connections:
            fake_nango.connections.remove(newer[-1])

    fake_nango.on_list_page = deleted_meanwhile
    counts = run_reconcile(api, auth_headers)

    assert counts["seen"] == total - 1  # user_1 was shifted past the listing...
    assert counts["deleted"] == 0  # ...and confirmed present, exactly
    assert connection_row(sync_engine, "user_1").status == "active"
    listings = fake_nango.requests_to("GET", "/connections")
    assert not any("search" in r.query for r in listings)
    [confirmation] = [r for r in listings if "connectionId" in r.query]
    assert confirmation.query["connectionId"] == "user_1"
    assert confirmation.query["integrationId"] == "github"
    # A search, as the check used to ask, would not have found it on its page.
    nango = TestClient(fake_nango.app, headers={"Authorization": f"Bearer {fake_nango.secret_key}"})
    page = nango.get("/connections", params={"search": "user_1", "limit": 100}).json()
    assert len(page["connections"]) == 100
    assert "user_1" not in [c["connection_id"] for c in page["connections"]]


@pytest.mark.anyio
async def test_reconcile_finishes_through_a_burst_of_429s(
    database: Database, sync_engine: Engine, small_pages: int
) -> None:
    fake = FakeNango()
    for i in range(10):
        fake.add_connection(connection_id=f"c{i}", tags={"end_user_id": f"u{i}"})
    add_connection(sync_engine, connection_id="gone", end_user_id="u-g", updated_at=HOUR_AGO)

    def burst(page: int) -> None:
        if page == 1:
            fake.limiter.refuse_next(8, retry_after=0)

    fake.on_list_page = burst
    async with client_for(fake, retries=0, rate_limit_deadline_seconds=0.0) as nango:
        counts = await reconcile(database=database, nango=nango, environment="prod", trigger="cli")
    assert counts is not None
    assert (counts.seen, counts.created, counts.deleted) == (10, 10, 1)
    assert fake.limiter.refusals == 8
    assert connection_row(sync_engine, "gone").status == "deleted"
    with sync_engine.connect() as conn:
        run = conn.execute(select(SQLModel.metadata.tables["reconcile_runs"])).one()
    assert run.status == "succeeded"


@pytest.mark.anyio
async def test_reconcile_paces_itself_under_the_rate_limit(
    database: Database, sync_engine: Engine, small_pages: int, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeNango()
    for i in range(11):
        fake.add_connection(connection_id=f"c{i}")
    add_connection(sync_engine, connection_id="gone", updated_at=HOUR_AGO)
    fake.limiter.per_window(4, window=1.0)
    started = time.monotonic()
    # Nango rounds the reset time down to the second: the margin covers that.
    async with client_for(fake, rate_limit_margin_seconds=1.0) as nango:
        counts = await reconcile(database=database, nango=nango, environment="prod", trigger="cli")
    assert counts is not None
    assert (counts.seen, counts.deleted) == (11, 1)
    assert len(fake.requests) == 4 + 1  # three full pages and an empty one, one confirmation
    assert fake.limiter.refusals == 0  # it waited for the next window instead
    assert time.monotonic() - started >= 0.5
    assert "reconcile_paced" in capsys.readouterr().err
