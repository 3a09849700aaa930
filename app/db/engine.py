"""The async engine: psycopg 3 for Postgres, aiosqlite for SQLite, never blocking the loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.settings import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.is_sqlite:
        return _sqlite_engine(settings.database_url)
    return create_async_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout=settings.database_pool_timeout_seconds,
        # A database restart or failover leaves dead sockets in the pool; ping before use
        # so the service recovers without a restart.
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"connect_timeout": 5, "application_name": "nango-registry"},
    )


def _sqlite_engine(url: str) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # SQLite upgrades a read lock to a write lock lazily and fails with "database is
        # locked" when two writers race; taking the write lock up front makes writers queue.
        # Readers (see create_reader) take no lock, and WAL lets them run beside a writer.
        reading = connection.get_execution_options().get(_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")

    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


_READ_ONLY = "nango_registry_read_only"


def create_reader(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for requests that only read, sharing the engine's pool.

    On SQLite they take no write lock (WAL lets them run beside a writer). On Postgres they are
    ordinary sessions: autocommit would save the BEGIN and ROLLBACK round trips, but measured
    under load it saved no CPU and made the tail latency worse (bench/, November 2026).
    """
    if engine.dialect.name == "postgresql":
        return create_sessionmaker(engine)
    return async_sessionmaker(
        engine.execution_options(**{_READ_ONLY: True}), expire_on_commit=False
    )


@asynccontextmanager
async def unit_of_work(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One session and one transaction: committed on success, rolled back on any error."""
    async with sessionmaker() as session, session.begin():
        yield session
