"""What a subscriber receives: a feed event as the Standard Webhooks body ``{type, timestamp,
data}``, ``data`` being the event exactly as ``GET /v1/events`` lists it (``event_json``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.connections.feed import EVENT_FIELDS, FeedEvent, event_json
from app.db.database import Transaction, sql

EVENT = sql(f"SELECT {', '.join(EVENT_FIELDS)} FROM feed_events WHERE id = :id")  # noqa: S608


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
    event = FeedEvent(*row)
    return Message(type=event.type, timestamp=event.occurred_at, data=event_json(event))
