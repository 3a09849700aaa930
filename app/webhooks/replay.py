"""Re-apply stored deliveries, in the order they arrived (``nango-registry replay``).

By default only deliveries whose processing failed are replayed; once one applies it is no
longer ``failed``, so running replay twice changes nothing. ``include_all`` re-applies every
delivery; the history rows a delivery already produced are replaced, not repeated.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col, select

from app.db.models import ConnectionEvent, Delivery, DeliveryOutcome
from app.webhooks.inbox import process_delivery
from app.webhooks.payloads import InvalidBody, parse_body, read_envelope


async def replay_deliveries(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    default_environment: str,
    include_all: bool = False,
    after_id: int = 0,
    batch_size: int = 200,
) -> dict[str, int]:
    counts: Counter[str] = Counter()
    cursor = after_id
    while True:
        async with sessionmaker() as session:
            query = select(col(Delivery.id)).where(col(Delivery.id) > cursor)
            if not include_all:
                query = query.where(col(Delivery.outcome) == DeliveryOutcome.FAILED)
            found_ids = await session.execute(query.order_by(col(Delivery.id)).limit(batch_size))
            ids = [int(found) for found in found_ids.scalars().all() if found is not None]
        if not ids:
            return {"replayed": counts.total(), **counts}
        for delivery_id in ids:
            cursor = delivery_id
            async with sessionmaker() as session, session.begin():
                delivery = (
                    await session.execute(
                        select(Delivery).where(col(Delivery.id) == delivery_id).with_for_update()
                    )
                ).scalar_one()
                try:
                    payload = parse_body(delivery.body.encode("utf-8"))
                except InvalidBody:
                    counts["unparseable"] += 1
                    continue
                await session.execute(
                    delete(ConnectionEvent).where(col(ConnectionEvent.delivery_id) == delivery_id)
                )
                result = await process_delivery(
                    session,
                    delivery_id=delivery_id,
                    payload=payload,
                    envelope=read_envelope(payload),
                    default_environment=default_environment,
                )
                counts[result.outcome] += 1
