"""Duplicates, races and every arrival order, against the real database (SQLite and Postgres).

Concurrent requests run as tasks on one event loop through ``httpx2.ASGITransport``: each holds
its own session and pooled connection, so their transactions really overlap on the database
(checked by counting open transactions, not assumed). Expected states come from ``final_state``,
the rules of ``app.webhooks.rules`` transcribed in ``tests.webhooks.rules_model``, never from
per-order constants.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx2
import pytest
from sqlalchemy import Engine, text, update
from starlette.applications import Starlette

from app.application import create_app
from app.db.tables import DeliveryTable
from app.db.types import utcnow
from app.webhooks import inbox
from tests.webhooks.helpers import signed_headers
from tests.webhooks.rules_model import (
    CREATION,
    CREATION_FAILED,
    DELETION,
    OVERRIDE_FAILED,
    OVERRIDE_OK,
    REFRESH_FAILED,
    REFRESH_OK,
    State,
    final_state,
)

pytestmark = pytest.mark.anyio


EVENT_SETS = {
    "refresh": (CREATION, REFRESH_FAILED, REFRESH_OK, DELETION),
    "override": (CREATION, OVERRIDE_OK, OVERRIDE_FAILED, REFRESH_FAILED),
    "recovery": (CREATION, OVERRIDE_OK, REFRESH_OK),
    "failed-creation": (CREATION_FAILED, CREATION, REFRESH_FAILED),
}


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx2.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://registry.test") as c:
            yield c


class OverlapMeter:
    """Counts what is open at once on the app's database: requests in a write transaction
    (or waiting for one) and transactions actually begun.

    On SQLite writers queue for the one write connection by design, so there only the requests
    waiting for it can overlap; on Postgres the transactions themselves must.
    """

    def __init__(self) -> None:
        self.entered = self.transactions = 0
        self.peak_entered = self.peak_transactions = 0
        self.dialect = ""

    def attach(self, app: Starlette) -> None:
        database = app.state.registry.database
        self.dialect = database.dialect
        begin = database.transaction

        @asynccontextmanager
        async def counted() -> AsyncIterator[Any]:
            self.entered += 1
            self.peak_entered = max(self.peak_entered, self.entered)
            try:
                async with begin() as tx:
                    self.transactions += 1
                    self.peak_transactions = max(self.peak_transactions, self.transactions)
                    try:
                        yield tx
                    finally:
                        self.transactions -= 1
            finally:
                self.entered -= 1

        database.transaction = counted

    def assert_overlapped(self) -> None:
        assert self.peak_entered > 1, "no two requests ever wanted a transaction at once"
        if self.dialect == "postgresql":
            assert self.peak_transactions > 1, "no two transactions were ever open at once"


async def post_all(client: httpx2.AsyncClient, bodies: Sequence[bytes]) -> list[httpx2.Response]:
    return list(
        await asyncio.gather(
            *(
                client.post("/webhooks/nango", content=body, headers=signed_headers(body))
                for body in bodies
            )
        )
    )


def observed(sync_engine: Engine, connection_id: str) -> State:
    with sync_engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, status, error_type, end_user_id, deleted_at FROM connections"
                " WHERE connection_id = :cid"
            ),
            {"cid": connection_id},
        ).all()
        assert len(rows) <= 1, f"{len(rows)} rows for one connection"
        if not rows:
            return State(None, None, None, 0)
        row = rows[0]
        assert (row.deleted_at is not None) == (row.status == "deleted")
        history = conn.execute(
            text(
                "SELECT from_status, to_status, delivery_id FROM connection_events"
                " WHERE connection_pk = :pk ORDER BY id"
            ),
            {"pk": row.id},
        ).all()
    # The history starts once from no status, ends at the current one, and every entry
    # names the delivery that caused it, each delivery at most once.
    assert [entry.from_status for entry in history].count(None) == 1
    assert history[0].from_status is None
    assert history[-1].to_status == row.status
    delivery_ids = [entry.delivery_id for entry in history]
    assert None not in delivery_ids
    assert len(set(delivery_ids)) == len(delivery_ids)
    return State(row.status, row.error_type, row.end_user_id, len(history))


def stored_bodies(sync_engine: Engine, connection_id: str) -> Counter[str]:
    with sync_engine.connect() as conn:
        rows = conn.execute(
            text("SELECT body FROM deliveries WHERE connection_id = :cid"), {"cid": connection_id}
        ).all()
    return Counter(row.body for row in rows)


def count(sync_engine: Engine, table: str) -> int:
    with sync_engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608


@pytest.fixture
def parallel_app(make_settings: Any) -> Starlette:
    # The pool as deployed (5 + 2 overflow): bursts wider than the pool must queue, not fail.
    return create_app(make_settings())


async def test_fifty_identical_deliveries_at_once_store_one_and_apply_once(
    parallel_app: Starlette, sync_engine: Engine
) -> None:
    body = CREATION.body("conn-fifty")
    meter = OverlapMeter()
    async with running(parallel_app) as client:
        meter.attach(parallel_app)
        responses = await post_all(client, [body] * 50)

    assert [response.status_code for response in responses] == [200] * 50
    outcomes = Counter(response.json()["status"] for response in responses)
    assert outcomes == {"applied": 1, "duplicate": 49}
    meter.assert_overlapped()
    assert count(sync_engine, "deliveries") == 1
    assert count(sync_engine, "connections") == 1
    assert count(sync_engine, "connection_events") == 1
    assert observed(sync_engine, "conn-fifty") == final_state([CREATION])


@pytest.mark.parametrize("name", sorted(EVENT_SETS))
async def test_every_arrival_order_twice_ends_in_the_state_the_rules_give(
    parallel_app: Starlette, sync_engine: Engine, name: str
) -> None:
    events = EVENT_SETS[name]
    orders = list(itertools.permutations(events))

    async def deliver_in_order(client: httpx2.AsyncClient, bodies: list[bytes]) -> None:
        # The whole sequence twice: a retry of an early event arrives after later ones.
        for body in [*bodies, *bodies]:
            (response,) = await post_all(client, [body])
            assert response.status_code == 200, response.text

    # One connection per order; the orders run side by side, each strictly in sequence.
    async with running(parallel_app) as client:
        await asyncio.gather(
            *(
                deliver_in_order(client, [item.body(f"{name}-{number}") for item in order])
                for number, order in enumerate(orders)
            )
        )

    for number, order in enumerate(orders):
        connection_id = f"{name}-{number}"
        expected = final_state(order)
        assert observed(sync_engine, connection_id) == expected, [
            (item.operation, item.success) for item in order
        ]
        if DELETION in order:
            assert expected.status == "deleted"
        assert stored_bodies(sync_engine, connection_id) == Counter(
            item.body(connection_id).decode() for item in order
        )


@pytest.mark.parametrize(
    "first_events",
    [
        # One takes Postgres's one-statement path (inbox.STORE_NEW_CONNECTION), one the rules'.
        pytest.param((CREATION, REFRESH_FAILED), id="statement-and-rules"),
        # Both take it: one creates the row, the other finds it and leaves the rest to the rules.
        pytest.param((CREATION, OVERRIDE_OK), id="statement-twice"),
    ],
)
async def test_concurrent_first_events_for_a_new_connection_create_one_row(
    parallel_app: Starlette,
    sync_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    first_events: tuple[Any, ...],
) -> None:
    connection_ids = [f"race-{number}" for number in range(10)]
    bodies = [item.body(cid) for cid in connection_ids for item in first_events]
    paths: Counter[bool | None] = Counter()
    shortcut = inbox.store_new_connection

    async def noted(*args: Any, **kwargs: Any) -> Any:
        result = await shortcut(*args, **kwargs)
        paths[None if result is None else result[1]] += 1
        return result

    monkeypatch.setattr(inbox, "store_new_connection", noted)
    meter = OverlapMeter()
    async with running(parallel_app) as client:
        meter.attach(parallel_app)
        responses = await post_all(client, bodies)

    assert [response.status_code for response in responses] == [200] * len(bodies)
    meter.assert_overlapped()
    possible = {final_state(order) for order in itertools.permutations(first_events)}
    for cid in connection_ids:
        assert observed(sync_engine, cid) in possible
        assert sum(stored_bodies(sync_engine, cid).values()) == len(first_events)
    assert count(sync_engine, "connections") == len(connection_ids)
    if sync_engine.dialect.name == "postgresql" and OVERRIDE_OK in first_events:
        assert paths == {True: len(connection_ids), False: len(connection_ids)}
    elif sync_engine.dialect.name == "postgresql":
        # The creation's statement finds the row stored when the rules' insert won the race
        # (which one wins is the race's: the case above is the one that always takes both).
        assert paths[None] == len(connection_ids)
        assert paths[True] + paths[False] == len(connection_ids)
    else:
        assert paths == {None: len(bodies)}


async def test_a_whole_event_set_at_once_twice_ends_in_a_state_some_order_gives(
    parallel_app: Starlette, sync_engine: Engine
) -> None:
    events = EVENT_SETS["refresh"]
    connection_ids = [f"burst-{number}" for number in range(6)]
    bodies = [item.body(cid) for cid in connection_ids for item in events] * 2
    async with running(parallel_app) as client:
        responses = await post_all(client, bodies)

    assert [response.status_code for response in responses] == [200] * len(bodies)
    outcomes = Counter(response.json()["status"] for response in responses)
    assert outcomes["duplicate"] == len(bodies) // 2
    possible = {final_state(order) for order in itertools.permutations(events)}
    for cid in connection_ids:
        state = observed(sync_engine, cid)
        assert state in possible
        assert state.status == "deleted"  # a deletion in the set wins whatever the order
        assert stored_bodies(sync_engine, cid) == Counter(
            item.body(cid).decode() for item in events
        )


async def test_a_body_repeated_after_the_window_is_applied_once_even_when_raced(
    parallel_app: Starlette, sync_engine: Engine
) -> None:
    """A refresh that fails again after a recovery sends the very same body: a new event."""
    connection_id = "conn-again"
    broke, recovered = REFRESH_FAILED.body(connection_id), REFRESH_OK.body(connection_id)
    async with running(parallel_app) as client:
        for body in [CREATION.body(connection_id), broke, recovered]:  # in this order
            (response,) = await post_all(client, [body])
            assert response.json()["status"] == "applied"
        window = parallel_app.state.registry.settings.webhook_dedupe_window_seconds
        with sync_engine.begin() as conn:
            conn.execute(
                update(DeliveryTable).values(received_at=utcnow() - timedelta(seconds=window + 1))
            )
        meter = OverlapMeter()
        meter.attach(parallel_app)
        responses = await post_all(client, [broke] * 20)

    meter.assert_overlapped()
    assert [response.status_code for response in responses] == [200] * 20
    assert Counter(response.json()["status"] for response in responses) == {
        "applied": 1,
        "duplicate": 19,
    }
    assert observed(sync_engine, connection_id) == final_state(
        [CREATION, REFRESH_FAILED, REFRESH_OK, REFRESH_FAILED]
    )
    assert stored_bodies(sync_engine, connection_id) == Counter(
        body.decode() for body in [CREATION.body(connection_id), broke, broke, recovered]
    )
    with sync_engine.connect() as conn:
        keys = [row.dedupe_key for row in conn.execute(text("SELECT dedupe_key FROM deliveries"))]
    archived = [key for key in keys if "#" in key]
    assert len(archived) == 1
    assert archived[0].partition("#")[0] == hashlib.sha256(broke).hexdigest()
