"""The data layer's bounds: statements cut off in time, cancelled with their caller, refused
for their size, and API work kept from taking every pooled connection (issue 13, point 1)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from app.db.database import (
    API_WORK,
    POSTGRES,
    Database,
    DatabaseTimeout,
    PostgresDatabase,
    QueryTimeout,
    QueryTooComplex,
    Statement,
    _SqliteTransaction,
    create_database,
    postgres_only,
    sql,
    together,
)

NEVER_ENDS = sql(
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
    postgres="SELECT pg_sleep(600)",
)
ONE = sql("SELECT 1")


def _database(make_settings: Any, **overrides: Any) -> Database:
    return create_database(make_settings(**overrides), bounded=True)


async def _run(database: Database, statement: Any, params: Any = None) -> Any:
    await database.open()
    try:
        async with database.reader() as tx:
            return await tx.fetchall(statement, params)
    finally:
        await database.close()


def test_a_statement_is_cut_off_at_its_time_limit(make_settings: Any, sync_engine: Engine) -> None:
    database = _database(make_settings, database_statement_timeout_seconds=0.3)
    started = time.monotonic()
    expected = QueryTimeout if database.dialect == "sqlite" else psycopg.errors.QueryCanceled
    with pytest.raises(expected):
        asyncio.run(_run(database, NEVER_ENDS))
    assert time.monotonic() - started < 5


def test_commands_run_unbounded(make_settings: Any, sync_engine: Engine) -> None:
    database = create_database(make_settings(database_statement_timeout_seconds=0.001))
    assert asyncio.run(_run(database, ONE)) == [(1,)]


def test_a_cancelled_statement_stops_and_frees_its_connection(
    make_settings: Any, sync_engine: Engine
) -> None:
    database = _database(make_settings, database_statement_timeout_seconds=60)

    async def scenario() -> list[Any]:
        await database.open()
        try:

            async def slow() -> None:
                async with database.reader() as tx:
                    await tx.fetchall(NEVER_ENDS)

            task = asyncio.create_task(slow())
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # Every reader answers at once: none is left running the abandoned statement.
            async with asyncio.timeout(5):
                results = []
                for _ in range(3):
                    async with database.reader() as tx:
                        results.append(await tx.fetchall(ONE))
            return results
        finally:
            await database.close()

    assert asyncio.run(scenario()) == [[(1,)]] * 3


def test_a_statement_too_large_for_sqlite_is_refused_for_its_size(
    make_settings: Any, sync_engine: Engine
) -> None:
    database = _database(make_settings)
    if database.dialect != "sqlite":
        pytest.skip("Postgres takes an expression 2000 deep")
    statement = sql("SELECT 1" + " + 1" * 2000)  # an expression tree 2000 deep
    with pytest.raises(QueryTooComplex):
        asyncio.run(_run(database, statement))


def test_api_work_leaves_connections_to_the_rest(make_settings: Any, sync_engine: Engine) -> None:
    database = _database(
        make_settings,
        database_pool_size=3,
        database_max_overflow=0,
        database_pool_timeout_seconds=0.5,
    )
    if not isinstance(database, PostgresDatabase):
        pytest.skip("SQLite's webhooks write on a connection of their own")

    async def scenario() -> None:
        await database.open()
        held = asyncio.Event()
        release = asyncio.Event()

        async def lookup() -> None:
            API_WORK.set(True)
            async with database.reader() as tx:
                await tx.fetchall(ONE)
                held.set()
                await release.wait()

        first = asyncio.create_task(lookup())
        await held.wait()
        try:
            # The one API slot (3 connections, 2 kept back) is taken: the next lookup waits,
            # then gives up with a 503's error...
            API_WORK.set(True)
            started = time.monotonic()
            with pytest.raises(DatabaseTimeout):
                async with database.reader() as tx:
                    await tx.fetchall(ONE)
            # ...after the pool's timeout, the one the database names in public.
            assert database.pool_timeout == 0.5
            assert 0.45 <= time.monotonic() - started < 2
            # ...while other work gets a connection at once.
            API_WORK.set(False)
            async with asyncio.timeout(2):
                async with database.transaction() as tx:
                    assert await tx.fetchall(ONE) == [(1,)]
        finally:
            release.set()
            await first
            await database.close()

    asyncio.run(scenario())


def test_sqlite_reads_beyond_the_readers_queue_and_their_wait_counts_against_the_limit(
    make_settings: Any, sync_engine: Engine
) -> None:
    """Reads are not checked out: more reads than readers wait in a reader's queue, answered in
    turn, and a read whose time limit ran out while it waited fails without starting."""
    database = _database(make_settings, database_statement_timeout_seconds=0.5)
    if database.dialect != "sqlite":
        pytest.skip("SQLite's readers")

    async def read(statement: Any) -> Any:
        async with database.reader() as tx:
            return await tx.fetchall(statement)

    async def hold(seconds: float) -> None:
        """Keep a reader's thread busy with work its time limit cannot cut short, so that
        whatever waits behind it waits that long (a statement would stop at the limit, only
        microseconds apart from the deadline of the read behind it: a race)."""
        async with database.reader() as tx:
            assert isinstance(tx, _SqliteTransaction)
            await tx._connection.run(time.sleep, seconds)

    async def scenario() -> tuple[list[Any], list[BaseException | Any], BaseException | Any]:
        await database.open()
        try:
            quick = await asyncio.gather(*(read(ONE) for _ in range(10)))
            # Both readers busy past the limit, a third read queued behind one of them.
            outcomes = await asyncio.gather(hold(1.0), hold(1.0), read(ONE), return_exceptions=True)
            stopped = (await asyncio.gather(read(NEVER_ENDS), return_exceptions=True))[0]
            return quick, list(outcomes), stopped
        finally:
            await database.close()

    quick, outcomes, stopped = asyncio.run(scenario())
    assert quick == [[(1,)]] * 10
    assert outcomes[:2] == [None, None]
    assert isinstance(outcomes[2], QueryTimeout)
    assert "waited past its time limit" in str(outcomes[2])
    # A statement that runs past the limit is stopped by it, not by waiting.
    assert isinstance(stopped, QueryTimeout)
    assert "waited" not in str(stopped)


def test_a_postgres_only_statement_runs_on_postgres_and_is_refused_by_sqlite(
    make_settings: Any, sync_engine: Engine
) -> None:
    """``postgres_only`` is for a shortcut sent after checking ``tx.dialect``: SQLite refuses it
    loudly rather than doing nothing, and ``together()`` statements are for ``execute`` only."""
    statement = postgres_only("WITH one AS (SELECT 1 AS n) SELECT n + :more FROM one")
    database = _database(make_settings)

    async def attempt(use: str, chosen: Statement) -> Any:
        await database.open()
        try:
            async with database.transaction() as tx:
                if use == "execute":
                    return await tx.execute(chosen, {"more": 1})
                return await tx.fetchone(chosen, {"more": 1})
        finally:
            await database.close()

    if database.dialect == POSTGRES:
        assert tuple(asyncio.run(attempt("fetchone", statement)) or ()) == (2,)
        return
    for use in ("execute", "fetchone"):
        with pytest.raises(TypeError, match="not a single SQLite statement"):
            asyncio.run(attempt(use, statement))
    with pytest.raises(TypeError, match="not a single SQLite statement"):
        asyncio.run(attempt("fetchone", together("SELECT 1", ONE, ONE)))
