"""The reconcile lease (one reconciler across instances) and the scheduled reconciler."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import anyio
import httpx2
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, select
from sqlmodel import SQLModel

import app.db.tables  # noqa: F401  (registers the tables on the metadata)
from app.connections.reconcile import run_schedule
from app.db.database import Database
from app.db.leases import acquire_lease, release_lease
from app.db.types import utcnow
from app.nango.client import NangoClient
from tests.fakes.nango import DEFAULT_SECRET, FakeNango

pytestmark = pytest.mark.anyio

TTL = timedelta(seconds=30)
RUNS = SQLModel.metadata.tables["reconcile_runs"]


async def take(database: Database, holder: str, **kwargs: Any) -> bool:
    async with database.transaction() as tx:
        return await acquire_lease(tx, name="job", holder=holder, ttl=TTL, **kwargs)


async def test_one_holder_at_a_time_until_expiry(
    database: Database,
) -> None:
    assert await take(database, "a")
    assert not await take(database, "b")
    assert await take(database, "a")  # the holder extends its own lease
    later = utcnow() + TTL + timedelta(seconds=1)
    assert await take(database, "b", now=later)  # "a" expired
    assert not await take(database, "a", now=later)
    async with database.transaction() as tx:
        await release_lease(tx, name="job", holder="a")  # not a's to release
    assert not await take(database, "a", now=later)
    async with database.transaction() as tx:
        await release_lease(tx, name="job", holder="b")
    assert await take(database, "a")


async def test_racing_holders_get_exactly_one_lease(
    database: Database,
) -> None:
    results: list[bool] = []

    async def contend(index: int) -> None:
        results.append(await take(database, f"holder-{index}"))

    async with anyio.create_task_group() as group:
        for index in range(8):
            group.start_soon(contend, index)
    assert sorted(results) == [False] * 7 + [True]


async def test_two_schedulers_never_reconcile_at_the_same_time(
    database: Database, sync_engine: Engine
) -> None:
    fake = FakeNango()
    for i in range(5):
        fake.add_connection(connection_id=f"c{i}", tags={"end_user_id": f"u{i}"})

    async def slow_pages(page: int) -> None:
        await anyio.sleep(0.05)  # long enough for the other instance to try meanwhile

    fake.on_list_page = slow_pages
    interval = 0.4
    async with httpx2.AsyncClient(transport=fake.transport()) as http:
        nango = NangoClient(
            http=http, host="http://nango.test", secret_key=SecretStr(DEFAULT_SECRET)
        )
        with anyio.move_on_after(2.5):
            async with anyio.create_task_group() as group:
                for _ in range(2):
                    group.start_soon(
                        lambda: run_schedule(
                            database=database,
                            nango=nango,
                            environment="prod",
                            interval_seconds=interval,
                        )
                    )
    with sync_engine.connect() as conn:
        runs = conn.execute(select(RUNS).order_by(RUNS.c.started_at)).all()
    assert len(runs) >= 2, "the schedule did not run repeatedly"
    assert {r.trigger for r in runs} == {"schedule"}
    # The last run may have been cut short by the end of the test (cancelled: "failed").
    assert {r.status for r in runs[:-1]} <= {"succeeded"}
    finished = [r for r in runs if r.status == "succeeded"]
    for earlier, later in itertools.pairwise(finished):
        assert later.started_at >= earlier.finished_at, "two reconciles overlapped"
        # Spacing: a run that succeeded within 90% of the interval makes the other instance skip.
        assert (later.started_at - earlier.finished_at).total_seconds() >= interval * 0.9 - 0.05
    assert len(runs) <= 2.5 / (interval * 0.9) + 1
