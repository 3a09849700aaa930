"""What a subscriber receives: a feed event as the Standard Webhooks body ``{type, timestamp,
data}``, ``data`` being the event as ``GET /v1/events`` lists it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.db.database import Transaction, sql

# The feed's NOTIFY channel: an event committed (Postgres only).
FEED_CHANNEL = "feed_events"

EVENT = sql(
    "SELECT id, type, occurred_at, source, delivery_id, connection FROM feed_events WHERE id = :id"
)


@dataclass(frozen=True, slots=True)
class Message:
    type: str
    timestamp: datetime
    data: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {"type": self.type, "timestamp": self.timestamp, "data": self.data}


# Reads the event a delivery sends (None: it no longer exists); tests give their own.
EventSource = Callable[[Transaction, int], Awaitable[Message | None]]


async def load_feed_event(tx: Transaction, event_id: int) -> Message | None:
    row = await tx.fetchone(EVENT, {"id": event_id})
    if row is None:
        return None
    event_id, type_, occurred_at, source, delivery_id, connection = row
    data = {
        "id": event_id,
        "type": type_,
        "occurred_at": occurred_at,
        "source": source,
        "delivery_id": delivery_id,
        "connection": connection,
    }
    return Message(type=type_, timestamp=occurred_at, data=data)
