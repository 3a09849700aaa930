"""The inbox: every verified delivery is stored, once, before it is acknowledged.

Nango sends no delivery ID, so a delivery is identified by the SHA-256 of its raw body. The same
body again within ``WEBHOOK_DEDUPE_WINDOW_SECONDS`` is a retry and changes nothing; after the
window it is a new event (a refresh that fails again after a recovery sends the very same body),
so the older row's key is archived as ``<sha256>#<id>`` and the new delivery is stored.

Storing and applying share one transaction, so a delivery is never stored without its effect
nor applied without being stored. When applying fails with a bug or unexpected data, that
transaction is rolled back and the delivery alone is stored in a second one, with the error
(``outcome = failed``), for ``nango-registry replay``; Nango still gets its 2xx, since a retry
would fail the same way. Only a database that cannot commit makes the request fail (503).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import Table, update
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col, select

from app.connections.state import apply_delivery, expected_outcome
from app.connections.store import clean_text
from app.db.models import Delivery, DeliveryOutcome
from app.db.types import utcnow
from app.errors import is_database_unavailable
from app.logs import get_logger
from app.webhooks.payloads import Envelope

log = get_logger(__name__)

# The table, not the ORM entity, on the hot path: plain Core statements skip the ORM's bulk
# insert/update machinery (and its identity-map synchronisation), which profiling showed to cost
# more CPU than the rest of the request.
DELIVERIES: Table = Delivery.metadata.tables["deliveries"]

# Headers worth keeping for diagnosis. Signatures are never stored.
KEPT_HEADERS = ("content-type", "user-agent", "x-request-id", "x-forwarded-for")


def dedupe_key(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def kept_headers(headers: Any) -> dict[str, str]:
    kept = {}
    for name in KEPT_HEADERS:
        value = clean_text(headers.get(name), limit=512)
        if value is not None:
            kept[name] = value
    return kept


@dataclass(frozen=True, slots=True)
class IngestResult:
    delivery_id: int | None  # None: a duplicate
    outcome: str
    error: str | None = None


@cache
def _insert_delivery(dialect: str) -> Any:
    """Built once: building an INSERT per request costs more CPU than sending it."""
    insert = postgres_insert if dialect == "postgresql" else sqlite_insert
    return (
        insert(DELIVERIES)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(DELIVERIES.c.id)
    )


async def record_delivery(
    session: AsyncSession,
    *,
    body: bytes,
    envelope: Envelope,
    headers: dict[str, str],
    dedupe_window_seconds: int,
    outcome: DeliveryOutcome = DeliveryOutcome.RECORDED,
    error: str | None = None,
) -> int | None:
    """Insert the delivery; return its ID, or None when it is a duplicate."""
    key = dedupe_key(body)
    now = utcnow()
    processed = outcome != DeliveryOutcome.RECORDED or error is not None
    statement = _insert_delivery(session.get_bind().dialect.name)
    values = {
        "dedupe_key": key,
        "received_at": now,
        "webhook_type": envelope.webhook_type,
        "operation": envelope.operation,
        "success": envelope.success,
        "environment": envelope.environment,
        "integration_id": envelope.integration_id,
        "connection_id": envelope.connection_id,
        "body": body.decode("utf-8"),
        "headers": headers,
        "outcome": outcome,
        "error": error,
        "processed_at": now if processed else None,
        "attempts": 1 if processed else 0,
    }
    # Bounded: each turn either inserts, finds a duplicate, or archives a stale row that a
    # concurrent request had not archived yet.
    for _ in range(5):
        inserted = (await session.execute(statement, values)).scalar_one_or_none()
        if inserted is not None:
            return int(inserted)
        existing = (
            await session.execute(
                select(col(Delivery.id), col(Delivery.received_at))
                .where(col(Delivery.dedupe_key) == key)
                .with_for_update()
            )
        ).first()
        if existing is None:
            continue
        window = dedupe_window_seconds
        if window == 0 or now - existing.received_at < timedelta(seconds=window):
            return None
        await session.execute(
            update(Delivery)
            .where(col(Delivery.id) == existing.id, col(Delivery.dedupe_key) == key)
            .values(dedupe_key=f"{key}#{existing.id}")
        )
    raise RuntimeError("could not store the delivery after repeated dedupe conflicts")


def _failure(error: Exception) -> str:
    """What a delivery that failed to apply keeps for ``replay``.

    A database that is down is not the delivery's fault: that error goes on up (a 503, so
    Nango retries) instead of marking the delivery failed.
    """
    if is_database_unavailable(error):
        raise error
    log.error("delivery_failed", error_type=type(error).__name__)
    return f"{type(error).__name__}: {error}"[:2000]


async def process_delivery(
    session: AsyncSession,
    *,
    delivery_id: int,
    payload: Any,
    envelope: Envelope,
    default_environment: str,
) -> IngestResult:
    """Apply a stored delivery in a savepoint and record the outcome on it."""
    error_text: str | None = None
    try:
        async with session.begin_nested():
            outcome = await apply_delivery(
                session,
                delivery_id=delivery_id,
                payload=payload,
                envelope=envelope,
                default_environment=default_environment,
            )
    except Exception as error:
        outcome = DeliveryOutcome.FAILED
        error_text = _failure(error)
    await session.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.id == delivery_id)
        .values(
            outcome=outcome,
            error=error_text,
            processed_at=utcnow(),
            attempts=DELIVERIES.c.attempts + 1,
        )
    )
    return IngestResult(delivery_id, outcome, error_text)


async def ingest(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    body: bytes,
    payload: Any,
    envelope: Envelope,
    headers: dict[str, str],
    dedupe_window_seconds: int,
    default_environment: str,
) -> IngestResult:
    """Store and apply one delivery; returns once it is committed."""

    async def store(
        session: AsyncSession, outcome: DeliveryOutcome, error: str | None = None
    ) -> int | None:
        return await record_delivery(
            session,
            body=body,
            envelope=envelope,
            headers=headers,
            dedupe_window_seconds=dedupe_window_seconds,
            outcome=outcome,
            error=error,
        )

    expected = expected_outcome(envelope)
    applying = False
    try:
        async with sessionmaker() as session, session.begin():
            delivery_id = await store(session, expected)
            if delivery_id is None:
                return IngestResult(None, "duplicate")
            applying = True
            outcome = await apply_delivery(
                session,
                delivery_id=delivery_id,
                payload=payload,
                envelope=envelope,
                default_environment=default_environment,
            )
            if outcome != expected:
                await session.execute(
                    update(DELIVERIES).where(DELIVERIES.c.id == delivery_id).values(outcome=outcome)
                )
            return IngestResult(delivery_id, outcome)
    except Exception as error:
        if not applying:
            raise
        error_text = _failure(error)
    async with sessionmaker() as session, session.begin():
        delivery_id = await store(session, DeliveryOutcome.FAILED, error_text)
    if delivery_id is None:  # a concurrent copy of this delivery got in first
        return IngestResult(None, "duplicate")
    return IngestResult(delivery_id, DeliveryOutcome.FAILED, error_text)
