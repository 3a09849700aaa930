"""Leases: a named lock with an expiry, held by one process at a time, on SQLite and Postgres.

Chosen over a Postgres advisory lock so one code path (and one set of tests) covers both
databases, and so a holder that dies without releasing (a killed container) frees the lease by
expiry rather than by a dropped session. Acquiring is one statement,
``INSERT .. ON CONFLICT (name) DO UPDATE .. WHERE expired OR same holder .. RETURNING``, which
both databases run atomically: of two racing holders exactly one gets the row back.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, or_
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.db.models import Lease
from app.db.types import utcnow


async def acquire_lease(
    session: AsyncSession,
    *,
    name: str,
    holder: str,
    ttl: timedelta,
    now: datetime | None = None,
) -> bool:
    """Take (or extend, for its current holder) the lease until ``now + ttl``."""
    now = now or utcnow()
    insert = postgres_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    values = insert(Lease).values(name=name, holder=holder, expires_at=now + ttl)
    statement = values.on_conflict_do_update(
        index_elements=["name"],
        set_={"holder": values.excluded.holder, "expires_at": values.excluded.expires_at},
        where=or_(col(Lease.expires_at) <= now, col(Lease.holder) == holder),
    ).returning(col(Lease.holder))
    return (await session.execute(statement)).scalar_one_or_none() == holder


async def release_lease(session: AsyncSession, *, name: str, holder: str) -> None:
    await session.execute(delete(Lease).where(col(Lease.name) == name, col(Lease.holder) == holder))
