"""Arranging and reading connection rows with the synchronous test engine."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlmodel import SQLModel

import app.db.tables  # noqa: F401  (registers the tables on the metadata)

CONNECTIONS = SQLModel.metadata.tables["connections"]
EVENTS = SQLModel.metadata.tables["connection_events"]
FEED = SQLModel.metadata.tables["feed_events"]
DELIVERIES = SQLModel.metadata.tables["deliveries"]
_DELIVERY_KEYS = itertools.count()


def insert_connection(engine: Engine, **values: Any) -> None:
    now = datetime.now(UTC)
    row = {
        "environment": "prod",
        "integration_id": "github",
        "connection_id": "conn-1",
        "provider": "github",
        "tags": {},
        "status": "active",
        "created_at": now,
        "updated_at": now,
        **values,
    }
    with engine.begin() as conn:
        conn.execute(insert(CONNECTIONS).values(row))


def connection_row(engine: Engine, connection_id: str, integration_id: str = "github") -> Any:
    with engine.connect() as conn:
        return conn.execute(
            select(CONNECTIONS).where(
                CONNECTIONS.c.connection_id == connection_id,
                CONNECTIONS.c.integration_id == integration_id,
            )
        ).one()


def all_connections(engine: Engine) -> dict[tuple[str, str, str], Any]:
    with engine.connect() as conn:
        rows = conn.execute(select(CONNECTIONS)).all()
    return {(r.environment, r.integration_id, r.connection_id): r for r in rows}


def events(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(EVENTS).order_by(EVENTS.c.id)).all())


def feed(engine: Engine) -> list[Any]:
    """The change feed's rows, oldest first."""
    with engine.connect() as conn:
        return list(conn.execute(select(FEED).order_by(FEED.c.id)).all())


def feed_types(engine: Engine) -> list[tuple[str, str, str]]:
    """(type, source, connection ID) of every feed event, oldest first."""
    return [(row.type, row.source, row.connection["connection_id"]) for row in feed(engine)]


def insert_delivery(engine: Engine, **values: Any) -> int:
    """Store a delivery as the inbox would (an applied auth creation unless told); its ID."""
    row = {
        "dedupe_key": f"test-delivery-{next(_DELIVERY_KEYS)}",
        "received_at": datetime.now(UTC),
        "webhook_type": "auth",
        "operation": "creation",
        "success": True,
        "environment": "prod",
        "integration_id": "github",
        "connection_id": "conn-1",
        "body": '{"type":"auth"}',
        "headers": {"content-type": "application/json"},
        "outcome": "applied",
        "attempts": 1,
        **values,
    }
    with engine.begin() as conn:
        inserted = conn.execute(insert(DELIVERIES).values(row).returning(DELIVERIES.c.id))
        return int(inserted.scalar_one())
