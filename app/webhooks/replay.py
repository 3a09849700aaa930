"""Re-apply stored deliveries, in the order they arrived (``nango-registry replay``).

By default only deliveries whose processing failed are replayed; once one applies it is no
longer ``failed``, so running replay twice changes nothing. ``include_all`` re-applies every
delivery; the history rows a delivery already produced are replaced, not repeated. Each
delivery is applied like a new one (``app.webhooks.inbox.apply_or_fail``): in one transaction,
and if that raises, marked failed again in another.
"""

from __future__ import annotations

from collections import Counter

from app.db.database import Database, Transaction, sql
from app.webhooks.inbox import IngestResult, apply_or_fail, mark_processed
from app.webhooks.model import DeliveryOutcome
from app.webhooks.payloads import InvalidBody, parse_body, read_envelope
from app.webhooks.rules import apply_delivery

NEXT_FAILED = sql(
    "SELECT id FROM deliveries WHERE id > :after AND outcome = 'failed' ORDER BY id LIMIT :limit"
)
NEXT_ANY = sql("SELECT id FROM deliveries WHERE id > :after ORDER BY id LIMIT :limit")
LOCK_BODY = sql("SELECT body, environment FROM deliveries WHERE id = :id", lock=True)
DELETE_HISTORY = sql("DELETE FROM connection_events WHERE delivery_id = :id")


async def replay_deliveries(
    database: Database,
    *,
    default_environment: str,
    include_all: bool = False,
    after_id: int = 0,
    batch_size: int = 200,
) -> dict[str, int]:
    counts: Counter[str] = Counter()
    cursor = after_id
    query = NEXT_ANY if include_all else NEXT_FAILED
    while True:
        async with database.reader() as tx:
            ids = [
                row[0] for row in await tx.fetchall(query, {"after": cursor, "limit": batch_size})
            ]
        if not ids:
            return {"replayed": counts.total(), **counts}
        for delivery_id in ids:
            cursor = delivery_id
            result = await replay_one(
                database, delivery_id=delivery_id, default_environment=default_environment
            )
            counts[result.outcome] += 1


async def replay_one(
    database: Database, *, delivery_id: int, default_environment: str
) -> IngestResult:
    async def reapply(tx: Transaction) -> IngestResult:
        row = await tx.fetchone(LOCK_BODY, {"id": delivery_id})
        if row is None:
            return IngestResult(delivery_id, "missing")
        try:
            payload = parse_body(row[0].encode("utf-8"))
        except InvalidBody:
            return IngestResult(delivery_id, "unparseable")
        await tx.execute(DELETE_HISTORY, {"id": delivery_id})
        outcome = await apply_delivery(
            tx,
            delivery_id=delivery_id,
            payload=payload,
            # The environment stored with it: its body's, or its signing key's.
            envelope=read_envelope(payload, environment=row[1]),
            default_environment=default_environment,
        )
        await mark_processed(tx, delivery_id=delivery_id, outcome=outcome)
        return IngestResult(delivery_id, outcome)

    async def mark_failed(tx: Transaction, error_text: str) -> IngestResult:
        await mark_processed(
            tx, delivery_id=delivery_id, outcome=DeliveryOutcome.FAILED, error=error_text
        )
        return IngestResult(delivery_id, DeliveryOutcome.FAILED, error_text)

    return await apply_or_fail(database, apply=reapply, fail=mark_failed)
