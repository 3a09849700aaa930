"""The one helper for arranging and reading rows with the synchronous test engine.

Tests arrange rows directly when what they test reads what the receiver, the reconciler or the
API would have written; each ``add_*`` returns the new row's primary key.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select
from sqlmodel import Session, SQLModel

from app.db.tables import (
    ConnectionEventTable,
    ConnectionTable,
    ConnectionTagTable,
    DeliveryTable,
    SubscriptionAttemptTable,
    SubscriptionDeliveryTable,
)

CONNECTIONS = SQLModel.metadata.tables["connections"]
EVENTS = SQLModel.metadata.tables["connection_events"]
FEED = SQLModel.metadata.tables["feed_events"]
TAGS = SQLModel.metadata.tables["connection_tags"]
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
_sequence = itertools.count(1)
_OWNER_TAGS = ("end_user_id", "organization_id", "end_user_email")


def add_connection(engine: Engine, **fields: Any) -> int:
    """Insert a connection and its tag rows (owner fields are tags too, as the service keeps)."""
    n = next(_sequence)
    values: dict[str, Any] = {
        "environment": "prod",
        "integration_id": "github",
        "connection_id": f"conn-{n}",
        "provider": "github",
        "auth_mode": "OAUTH2",
        "status": "active",
        "created_at": BASE_TIME + timedelta(minutes=n),
        "updated_at": BASE_TIME + timedelta(minutes=n),
    }
    values.update(fields)
    if "metadata" in values:  # the table's attribute (SQLAlchemy keeps "metadata" for itself)
        values["nango_metadata"] = values.pop("metadata")
    tags: dict[str, str] = dict(values.pop("tags", None) or {})
    for key in _OWNER_TAGS:
        if values.get(key) is not None:
            tags.setdefault(key, values[key])
    with Session(engine) as session:
        connection = ConnectionTable(tags=tags, **values)
        session.add(connection)
        session.flush()
        assert connection.id is not None
        for key, value in tags.items():
            session.add(ConnectionTagTable(connection_pk=connection.id, key=key, value=value))
        session.commit()
        return connection.id


def add_delivery(engine: Engine, **fields: Any) -> int:
    """Store a delivery as the inbox would (an applied auth creation unless told)."""
    n = next(_sequence)
    values: dict[str, Any] = {
        "dedupe_key": f"dedupe-{n}",
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
        "received_at": BASE_TIME + timedelta(minutes=n),
    }
    values.update(fields)
    with Session(engine) as session:
        delivery = DeliveryTable(**values)
        session.add(delivery)
        session.commit()
        assert delivery.id is not None
        return delivery.id


def add_event(engine: Engine, connection_pk: int, **fields: Any) -> int:
    """Add an entry to a connection's history."""
    n = next(_sequence)
    values: dict[str, Any] = {
        "source": "webhook",
        "action": "creation",
        "success": True,
        "from_status": None,
        "to_status": "active",
        "created_at": BASE_TIME + timedelta(minutes=n),
    }
    values.update(fields)
    with Session(engine) as session:
        event = ConnectionEventTable(connection_pk=connection_pk, **values)
        session.add(event)
        session.commit()
        assert event.id is not None
        return event.id


def add_outbox_delivery(
    engine: Engine, subscription_id: int, event_id: int, connection_pk: int, **fields: Any
) -> int:
    """Queue a delivery to a subscription as the feed's trigger would (due now unless told)."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {"status": "pending", "tries": 0, "next_attempt_at": now}
    values.update(fields)
    with Session(engine) as session:
        delivery = SubscriptionDeliveryTable(
            subscription_id=subscription_id,
            event_id=event_id,
            connection_pk=connection_pk,
            created_at=now,
            **values,
        )
        session.add(delivery)
        session.commit()
        assert delivery.id is not None
        return delivery.id


def add_attempt(engine: Engine, delivery_id: int, **fields: Any) -> int:
    """Record a request sent for a queued delivery (a 200 unless told)."""
    with Session(engine) as session:
        delivery = session.get(SubscriptionDeliveryTable, delivery_id)
        assert delivery is not None
        values: dict[str, Any] = {
            "try_number": 1,
            "attempted_at": datetime.now(UTC),
            "outcome": "succeeded",
            "status_code": 200,
            "latency_ms": 12,
            "response_body": "ok",
        }
        values.update(fields)
        attempt = SubscriptionAttemptTable(
            subscription_id=delivery.subscription_id,
            delivery_id=delivery_id,
            event_id=delivery.event_id,
            **values,
        )
        session.add(attempt)
        session.commit()
        assert attempt.id is not None
        return attempt.id


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


def history(engine: Engine) -> list[Any]:
    """Every connection's history entries, oldest first."""
    with engine.connect() as conn:
        return list(conn.execute(select(EVENTS).order_by(EVENTS.c.id)).all())


def feed(engine: Engine) -> list[Any]:
    """The change feed's rows, oldest first."""
    with engine.connect() as conn:
        return list(conn.execute(select(FEED).order_by(FEED.c.id)).all())


def feed_types(engine: Engine) -> list[tuple[str, str, str]]:
    """(type, source, connection ID) of every feed event, oldest first."""
    return [(row.type, row.source, row.connection["connection_id"]) for row in feed(engine)]


def indexed_tags(engine: Engine) -> dict[str, str]:
    """The tag index (what tag[KEY]=VALUE lookups read), key to value, for every connection."""
    with engine.connect() as conn:
        return {row.key: row.value for row in conn.execute(select(TAGS.c.key, TAGS.c.value))}
