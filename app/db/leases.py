"""Leases: a named lock with an expiry, held by one process at a time, on SQLite and Postgres.

Chosen over a Postgres advisory lock so one code path (and one set of tests) covers both
databases, and so a holder that dies without releasing (a killed container) frees the lease by
expiry rather than by a dropped session. Acquiring is one statement,
``INSERT .. ON CONFLICT (name) DO UPDATE .. WHERE expired OR same holder .. RETURNING``, which
both databases run atomically: of two racing holders exactly one gets the row back.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from app.db.database import Transaction, sql
from app.db.types import utcnow

ACQUIRE = sql(
    "INSERT INTO leases (name, holder, expires_at) VALUES (:name, :holder, :expires_at)"
    " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at"
    " WHERE leases.expires_at <= :now OR leases.holder = :holder"
    " RETURNING holder"
)
RELEASE = sql("DELETE FROM leases WHERE name = :name AND holder = :holder")


async def acquire_lease(
    tx: Transaction,
    *,
    name: str,
    holder: str,
    ttl: timedelta,
    now: datetime | None = None,
) -> bool:
    """Take (or extend, for its current holder) the lease until ``now + ttl``."""
    now = now or utcnow()
    row = await tx.fetchone(
        ACQUIRE, {"name": name, "holder": holder, "expires_at": now + ttl, "now": now}
    )
    return row is not None and row[0] == holder


async def release_lease(tx: Transaction, *, name: str, holder: str) -> None:
    await tx.execute(RELEASE, {"name": name, "holder": holder})
