"""Fetching a new or re-authorized connection's configuration and metadata in the background.

A creation or override webhook names a connection whose configuration (and perhaps metadata)
Nango has just set. The receiver asks for them here after its transaction is committed and
answers at once: the fetch runs as a task of its own, never delaying the 2xx Nango waits for.

Bounded in every direction: one fetch per connection at a time (a repeat request joins it),
``MAX_CONCURRENT`` at once, ``MAX_PENDING`` waiting (beyond, requests are dropped with a log
line), ``attempts`` tries each with a doubling wait. What is dropped or fails for good is
filled by the next reconcile, which fetches for connections still lacking them. Every task is
tracked and cancelled (and awaited) by ``close()``, which ``lifespan`` calls at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib

import anyio

from app.connections.details import fetch_details
from app.connections.model import COLUMNS, Connection
from app.db.database import Database, sql
from app.logs import get_logger
from app.metrics import DETAIL_FETCHES
from app.nango.client import NangoClient, NangoNotConfigured

log = get_logger(__name__)

MAX_CONCURRENT = 2  # leaves Nango's rate limit to the calls someone is waiting on
MAX_PENDING = 1000
# How long one call may wait out Nango's 429s: nobody is waiting on it.
CALL_PATIENCE_SECONDS = 120.0
MAX_RETRY_WAIT_SECONDS = 300.0

Key = tuple[str, str, str]  # (environment, integration_id, connection_id)

FIND_CONNECTION = sql(
    f"SELECT {COLUMNS} FROM connections"  # noqa: S608 (fixed column names)
    " WHERE environment = :environment AND integration_id = :integration_id"
    " AND connection_id = :connection_id"
)


class DetailFetches:
    def __init__(
        self,
        *,
        database: Database,
        nango: NangoClient,
        attempts: int = 3,
        retry_seconds: float = 10.0,
    ) -> None:
        self._database = database
        self._nango = nango.patient(CALL_PATIENCE_SECONDS)
        self._attempts = attempts
        self._retry_seconds = retry_seconds
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._closed = False

    def request(self, *, environment: str, integration_id: str, connection_id: str) -> bool:
        """Fetch in the background; False if not started (closed, pending already, too many)."""
        key = (environment, integration_id, connection_id)
        if self._closed or not self._nango.configured or key in self._tasks:
            return False
        if len(self._tasks) >= MAX_PENDING:
            DETAIL_FETCHES.labels(outcome="dropped").inc()
            log.warning("connection_details_dropped", pending=len(self._tasks))
            return False
        task = asyncio.create_task(self._fetch(key), name="connection-details")
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))
        return True

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def idle(self) -> None:
        """Wait until every fetch requested so far has ended (for tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self) -> None:
        """Refuse new fetches, cancel the running ones and wait for them to end."""
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _fetch(self, key: Key) -> None:
        for attempt in range(1, self._attempts + 1):
            try:
                async with self._slots:
                    outcome = await self._fetch_once(key)
            except NangoNotConfigured:
                return
            except Exception as error:  # retried, then left to reconcile: never raised
                log.warning(
                    "connection_details_failed",
                    integration_id=key[1],
                    error_type=type(error).__name__,
                    attempt=attempt,
                    attempts=self._attempts,
                )
                if attempt < self._attempts:
                    wait = self._retry_seconds * 2 ** (attempt - 1)
                    await anyio.sleep(min(wait, MAX_RETRY_WAIT_SECONDS))
                continue
            DETAIL_FETCHES.labels(outcome=outcome).inc()
            return
        DETAIL_FETCHES.labels(outcome="failed").inc()

    async def _fetch_once(self, key: Key) -> str:
        environment, integration_id, connection_id = key
        async with self._database.reader() as tx:
            row = await tx.fetchone(
                FIND_CONNECTION,
                {
                    "environment": environment,
                    "integration_id": integration_id,
                    "connection_id": connection_id,
                },
            )
        if row is None:
            return "unknown"
        fetched = await fetch_details(
            database=self._database,
            nango=self._nango,
            connection=Connection(*row),
            source="webhook",
        )
        return "fetched" if fetched is not None else "unknown"
