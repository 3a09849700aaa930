"""The reconcile lease (one reconciler across instances) and the scheduled reconciler."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import anyio
import httpx2
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.connections.reconcile import run_schedule
from app.db.engine import create_engine, create_sessionmaker, unit_of_work
from app.db.leases import acquire_lease, release_lease
from app.db.models import ReconcileRun
from app.db.types import utcnow
from app.nango.client import NangoClient
from app.settings import Settings
from tests.fakes.nango import DEFAULT_SECRET, FakeNango

pytestmark = pytest.mark.anyio

TTL = timedelta(seconds=30)
RUNS: Any = ReconcileRun.__table__


@pytest.fixture
async def sessionmaker(
    settings: Settings, sync_engine: Engine
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(settings)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def take(sessionmaker: async_sessionmaker[AsyncSession], holder: str, **kwargs: Any) -> bool:
    async with unit_of_work(sessionmaker) as session:
        return await acquire_lease(session, name="job", holder=holder, ttl=TTL, **kwargs)


async def test_one_holder_at_a_time_until_expiry(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    assert await take(sessionmaker, "a")
    assert not await take(sessionmaker, "b")
    assert await take(sessionmaker, "a")  # the holder extends its own lease
    later = utcnow() + TTL + timedelta(seconds=1)
    assert await take(sessionmaker, "b", now=later)  # "a" expired
    assert not await take(sessionmaker, "a", now=later)
    async with unit_of_work(sessionmaker) as session:
        await release_lease(session, name="job", holder="a")  # not a's to release
    assert not await take(sessionmaker, "a", now=later)
    async with unit_of_work(sessionmaker) as session:
        await release_lease(session, name="job", holder="b")
    assert await take(sessionmaker, "a")


async def test_racing_holders_get_exactly_one_lease(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    results: list[bool] = []

    async def contend(index: int) -> None:
        results.append(await take(sessionmaker, f"holder-{index}"))

    async with anyio.create_task_group() as group:
        for index in range(8):
            group.start_soon(contend, index)
    assert sorted(results) == [False] * 7 + [True]


async def test_two_schedulers_never_reconcile_at_the_same_time(
    sessionmaker: async_sessionmaker[AsyncSession], sync_engine: Engine
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
                            sessionmaker=sessionmaker,
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
