"""The inbox: every verified delivery is stored, once, before it is acknowledged.

Nango sends no delivery ID, so a delivery is identified by the SHA-256 of its raw body. The same
body again within ``WEBHOOK_DEDUPE_WINDOW_SECONDS`` is a retry and changes nothing; after the
window it is a new event (a refresh that fails again after a recovery sends the very same body),
so the older row's key is archived as ``<sha256>#<id>`` and the new delivery is stored.

Storing and applying share one transaction, so a delivery is never stored without its effect
nor applied without being stored. When applying fails with a bug or unexpected data, that
transaction is rolled back and the failure is written in a second one (``outcome = failed``,
with the error) for ``nango-registry replay``; Nango still gets its 2xx, since a retry would
fail the same way. Only a database that cannot commit makes the request fail (503). Replaying
a stored delivery follows the same two steps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from app.connections import feed, store
from app.connections.model import clean_text
from app.db.database import POSTGRES, Database, Transaction, json_select, postgres_only, sql
from app.db.types import utcnow
from app.errors import is_database_unavailable
from app.logs import get_logger
from app.webhooks.deliveries import DETAIL_COLUMNS
from app.webhooks.model import DeliveryOutcome
from app.webhooks.payloads import Envelope
from app.webhooks.rules import (
    apply_delivery,
    as_new_connection,
    expected_outcome,
)

log = get_logger(__name__)

# Headers worth keeping for diagnosis. Signatures are never stored.
KEPT_HEADERS = ("content-type", "user-agent", "x-request-id", "x-forwarded-for")

# The columns app.webhooks.deliveries reads, but the generated id, and the dedupe key.
_INSERT_COLUMNS = ("dedupe_key", *(name for name in DETAIL_COLUMNS if name != "id"))
_INSERT_DELIVERY = (
    f"INSERT INTO deliveries ({', '.join(_INSERT_COLUMNS)})"  # noqa: S608 (fixed names)
    f" VALUES ({', '.join(':' + name for name in _INSERT_COLUMNS)})"
    " ON CONFLICT (dedupe_key) DO NOTHING RETURNING id"
)
INSERT_DELIVERY = sql(_INSERT_DELIVERY)
# Postgres, the common case: an auth delivery whose connection is not stored yet (a creation).
# The delivery, the connection with its tags, its history row and its feed event in one
# statement, one round trip instead of three: each data-modifying CTE reads the rows of the one
# before, so a duplicate delivery inserts nothing at all, and a connection stored already is
# left alone (the delivery is in; the rules take over in the same transaction). Answers the
# delivery's ID and the new connection's (NULL when it was stored already); no row: duplicate.
_IDS = {"connection_pk": "inserted.id", "delivery_id": "delivery.id"}
_NEW_ROW = json_select("connections", "connection", store.NEW_COLUMNS, "delivery")
_HISTORY = json_select(
    "connection_events", "history", store.HISTORY_COLUMNS, **_IDS, sources="delivery, inserted"
)
_EVENT = json_select(
    "feed_events", "event", feed.APPEND_COLUMNS, **_IDS, sources="ordered, delivery, inserted"
)
STORE_NEW_CONNECTION = postgres_only(
    f"WITH delivery AS ({_INSERT_DELIVERY}),"  # noqa: S608 (fixed names)
    f" inserted AS (INSERT INTO connections ({', '.join(store.NEW_COLUMNS)}) {_NEW_ROW}"
    " ON CONFLICT (environment, integration_id, connection_id) DO NOTHING RETURNING id, tags),"
    f" {store.INDEX_INSERTED},"
    f" history AS (INSERT INTO connection_events ({', '.join(store.HISTORY_COLUMNS)}) {_HISTORY}),"
    f" {feed.ORDERED},"
    f" appended AS (INSERT INTO feed_events ({', '.join(feed.APPEND_COLUMNS)}) {_EVENT})"
    " SELECT delivery.id, inserted.id FROM delivery LEFT JOIN inserted ON true"
)
FIND_BY_KEY = sql("SELECT id, received_at FROM deliveries WHERE dedupe_key = :key", lock=True)
ARCHIVE_KEY = sql(
    "UPDATE deliveries SET dedupe_key = :archived WHERE id = :id AND dedupe_key = :key"
)
SET_OUTCOME = sql("UPDATE deliveries SET outcome = :outcome WHERE id = :id")
MARK_PROCESSED = sql(
    "UPDATE deliveries SET outcome = :outcome, error = :error, processed_at = :now,"
    " attempts = attempts + 1 WHERE id = :id"
)


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
    delivery_id: int  # a duplicate's: the delivery already stored
    outcome: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    delivery_id: int
    duplicate: bool  # the same body was stored within the dedupe window: this is that one
    # The same body came before, outside the window (Nango's repeat, or a captured body
    # replayed): it may fill in attribution, never change it (app.webhooks.rules).
    repeated: bool = False


async def record_delivery(
    tx: Transaction, values: dict[str, Any], *, dedupe_window_seconds: int
) -> Stored:
    """Insert the delivery (``values``: from ``delivery_values``); or, when it is a duplicate,
    name the one already stored."""
    key = values["dedupe_key"]
    now = values["received_at"]
    # Bounded: each turn either inserts, finds a duplicate, or archives a stale row that a
    # concurrent request had not archived yet.
    repeated = False
    for _ in range(5):
        inserted = await tx.fetchone(INSERT_DELIVERY, values)
        if inserted is not None:
            return Stored(int(inserted[0]), duplicate=False, repeated=repeated)
        existing = await tx.fetchone(FIND_BY_KEY, {"key": key})
        if existing is None:
            continue
        existing_id, received_at = existing
        window = dedupe_window_seconds
        if window == 0 or now - received_at < timedelta(seconds=window):
            return Stored(int(existing_id), duplicate=True)
        await tx.execute(
            ARCHIVE_KEY, {"archived": f"{key}#{existing_id}", "id": existing_id, "key": key}
        )
        repeated = True
    raise RuntimeError("could not store the delivery after repeated dedupe conflicts")


def delivery_values(
    *,
    body: bytes,
    envelope: Envelope,
    headers: dict[str, str],
    outcome: DeliveryOutcome = DeliveryOutcome.RECORDED,
    error: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The parameters of ``INSERT_DELIVERY``."""
    now = now or utcnow()
    processed = outcome != DeliveryOutcome.RECORDED or error is not None
    return {
        "dedupe_key": dedupe_key(body),
        "received_at": now,
        "webhook_type": envelope.webhook_type,
        "operation": envelope.operation,
        "success": envelope.success,
        "environment": envelope.environment,
        "integration_id": envelope.integration_id,
        "connection_id": envelope.connection_id,
        "body": body.decode("utf-8"),
        "headers": headers,
        "outcome": str(outcome),
        "error": error,
        "processed_at": now if processed else None,
        "attempts": 1 if processed else 0,
    }


def failure_text(error: Exception) -> str:
    """What a delivery that failed to apply keeps for ``replay``.

    A database that is down is not the delivery's fault: that error goes on up (a 503, so
    Nango retries) instead of marking the delivery failed.
    """
    if is_database_unavailable(error):
        raise error
    log.error("delivery_failed", error_type=type(error).__name__)
    return f"{type(error).__name__}: {error}"[:2000]


async def apply_or_fail(
    database: Database,
    *,
    apply: Callable[[Transaction], Awaitable[IngestResult]],
    fail: Callable[[Transaction, str], Awaitable[IngestResult]],
) -> IngestResult:
    """Run ``apply`` in one transaction; if it raises, roll back and run ``fail`` in another.

    ``apply`` raising before it stored anything worth keeping (a database outage) propagates.
    """
    try:
        async with database.transaction() as tx:
            return await apply(tx)
    except Exception as error:
        error_text = failure_text(error)
    async with database.transaction() as tx:
        return await fail(tx, error_text)


async def ingest(
    database: Database,
    *,
    body: bytes,
    payload: Any,
    envelope: Envelope,
    headers: dict[str, str],
    dedupe_window_seconds: int,
    default_environment: str,
) -> IngestResult:
    """Store and apply one delivery; returns once it is committed."""
    expected = expected_outcome(envelope)
    values = partial(delivery_values, body=body, envelope=envelope, headers=headers)

    async def apply(
        tx: Transaction, delivery_id: int, *, repeated: bool = False, stored: bool = False
    ) -> IngestResult:
        outcome = await apply_delivery(
            tx,
            delivery_id=delivery_id,
            payload=payload,
            envelope=envelope,
            default_environment=default_environment,
            repeated=repeated,
            connection_stored=stored,
        )
        if outcome != expected:
            await tx.execute(SET_OUTCOME, {"outcome": str(outcome), "id": delivery_id})
        return IngestResult(delivery_id, outcome)

    async def store_and_apply(tx: Transaction) -> IngestResult:
        delivery = values(outcome=expected)
        written = await store_new_connection(
            tx, delivery, payload, envelope, default_environment=default_environment
        )
        if written is not None:
            delivery_id, created = written
            if created:
                return IngestResult(delivery_id, DeliveryOutcome.APPLIED)
            return await apply(tx, delivery_id, stored=True)
        stored = await record_delivery(tx, delivery, dedupe_window_seconds=dedupe_window_seconds)
        if stored.duplicate:
            return IngestResult(stored.delivery_id, "duplicate")
        return await apply(tx, stored.delivery_id, repeated=stored.repeated)

    async def store_failed(tx: Transaction, error_text: str) -> IngestResult:
        failed = values(outcome=DeliveryOutcome.FAILED, error=error_text)
        stored = await record_delivery(tx, failed, dedupe_window_seconds=dedupe_window_seconds)
        if stored.duplicate:  # a concurrent copy of this delivery got in first
            return IngestResult(stored.delivery_id, "duplicate")
        return IngestResult(stored.delivery_id, DeliveryOutcome.FAILED, error_text)

    return await apply_or_fail(database, apply=store_and_apply, fail=store_failed)


async def store_new_connection(
    tx: Transaction,
    delivery: dict[str, Any],
    payload: Any,
    envelope: Envelope,
    *,
    default_environment: str,
) -> tuple[int, bool] | None:
    """``STORE_NEW_CONNECTION``, on Postgres for a delivery ``as_new_connection`` can write:
    ``(delivery ID, whether the connection was created)``. When it was stored already, the
    delivery is in and the rules must apply it. None, with nothing written, when the shortcut
    does not apply (SQLite, another kind of delivery) or the delivery is a duplicate or a
    repeat of an earlier body: ``record_delivery`` and the rules take it from there."""
    if tx.dialect != POSTGRES:
        return None
    new = as_new_connection(payload, envelope, default_environment=default_environment)
    if new is None:
        return None
    row = await tx.fetchone(
        STORE_NEW_CONNECTION,
        {**delivery, "connection": new.connection, "history": new.history, "event": new.event},
    )
    if row is None:
        return None
    delivery_id, connection_pk = row
    if connection_pk is not None:
        feed.appended(tx, [new.event])
    return delivery_id, connection_pk is not None


async def mark_processed(
    tx: Transaction, *, delivery_id: int, outcome: str, error: str | None = None
) -> None:
    await tx.execute(
        MARK_PROCESSED,
        {"outcome": outcome, "error": error, "now": utcnow(), "id": delivery_id},
    )
