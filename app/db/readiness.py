"""Is the database there, reachable and migrated? If not, one sentence that says why.

The same sentence is what ``/readyz`` answers, what ``serve`` logs at start and what every
command prints (``nango-registry: ...``), instead of a driver's traceback: a database that does
not exist (``database "x" does not exist``), a server that cannot be reached, a SQLite file that
is not there (only ``migrate`` creates one), a schema that was never migrated or is behind.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator

import psycopg
from sqlalchemy.exc import DBAPIError

from app.db.database import Database, DatabaseTimeout, connected, is_missing_table, sql
from app.db.migrate import head_revision
from app.settings import Settings

SCHEMA_REVISION = sql("SELECT version_num FROM alembic_version")
NO_SCHEMA = "the database has no schema: run nango-registry migrate"

# psycopg: 'connection failed: connection to server at "HOST" (ADDR), port N failed: REASON'
_CONNECTION_FAILED = re.compile(
    r'connection to server (?:at "(?P<host>[^"]*)"(?: \([^)]*\))?, port (?P<port>\d+)|on socket'
    r' "(?P<socket>[^"]*)") failed: (?P<reason>.*)'
)


class DatabaseNotReady(Exception):
    """The database cannot serve this version of the service; the message says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def describe_error(error: BaseException) -> str:
    """What went wrong with the database, in one line, without the driver's wrapping."""
    if isinstance(error, DBAPIError) and error.orig is not None:  # from Alembic's engine
        error = error.orig
    if is_missing_table(error):
        return NO_SCHEMA
    if isinstance(error, psycopg.Error):
        return _postgres_cause(str(error))
    if isinstance(error, sqlite3.Error | DatabaseTimeout):
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{type(error).__name__}: {error}".splitlines()[0]


def _postgres_cause(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else "the Postgres connection failed"
    if "FATAL:" in first:
        return first.rsplit("FATAL:", 1)[1].strip()
    match = _CONNECTION_FAILED.search(first)
    if match is None:
        return first
    where = match["socket"] or f"{match['host']}:{match['port']}"
    return f"cannot reach Postgres at {where}: {match['reason'].strip()}"


async def readiness_problem(database: Database) -> str | None:
    """None when the database answers and its schema is this version's; else why not."""
    try:
        async with database.reader() as tx:
            row = await tx.fetchone(SCHEMA_REVISION)
    except Exception as error:  # any driver or network failure means "not ready"
        return describe_error(underlying_error(database, error))
    revision = None if row is None else row[0]
    if revision is None:
        return NO_SCHEMA
    expected = head_revision()
    if revision != expected:
        return (
            f"the database schema is at revision {revision}, this version needs {expected}:"
            " run nango-registry migrate"
        )
    return None


def underlying_error(database: Database, error: BaseException) -> BaseException:
    """A pool that timed out says nothing of why; the last failed connection attempt does."""
    last: BaseException | None = getattr(database, "connect_error", None)
    return last if last is not None and isinstance(error, psycopg.OperationalError) else error


@contextlib.asynccontextmanager
async def ready_database(settings: Settings) -> AsyncIterator[Database]:
    """``connected``, for a command: DatabaseNotReady (one line) unless the database is usable."""
    async with connected(settings) as database:
        problem = await readiness_problem(database)
        if problem is not None:
            raise DatabaseNotReady(problem)
        yield database
