"""Loaded by the ``serve`` processes of tests/security that ask for slow lookups (PYTHONPATH).

Every connection listing first runs a statement that never ends on its own: Postgres sleeps,
SQLite counts for ever. Only DATABASE_STATEMENT_TIMEOUT_SECONDS, or the client leaving, stops
it: the worst lookup an attacker could find, without having to find it.
"""

from __future__ import annotations

from typing import Any

from app.connections import queries
from app.db.database import Transaction, sql
from app.logs import get_logger

log = get_logger("tests.security.slow")
STARTED = "slow_lookup_started"  # tests/security/test_lookup_flood.py waits for it

NEVER_ENDS = sql(
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
    postgres="SELECT pg_sleep(600)",
)
_find_connections = queries.find_connections


async def _slow_find_connections(tx: Transaction, **arguments: Any) -> Any:
    # Said once the lookup holds what a lookup holds (on Postgres an API slot and its
    # connection), just before its statement: a test waits for these lines, not for a guess.
    log.info(STARTED)
    await tx.fetchall(NEVER_ENDS)
    return await _find_connections(tx, **arguments)


queries.find_connections = _slow_find_connections
