"""Arrange rows directly: the lookup API reads what the webhook receiver and reconciler write."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from app.db.tables import ConnectionEventTable, ConnectionTable, ConnectionTagTable, DeliveryTable

_sequence = itertools.count(1)
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def add_connection(engine: Engine, **fields: Any) -> int:
    """Insert a connection and one ConnectionTagTable row per tag; return its primary key."""
    n = next(_sequence)
    values: dict[str, Any] = {
        "environment": "prod",
        "integration_id": "github",
        "connection_id": f"conn-{n}",
        "provider": "github",
        "auth_mode": "OAUTH2",
        "created_at": BASE_TIME + timedelta(minutes=n),
        "updated_at": BASE_TIME + timedelta(minutes=n),
    }
    values.update(fields)
    if "metadata" in values:  # the table's attribute (SQLAlchemy keeps "metadata" for itself)
        values["nango_metadata"] = values.pop("metadata")
    tags: dict[str, str] = dict(values.pop("tags", None) or {})
    for key, column in (
        ("end_user_id", "end_user_id"),
        ("organization_id", "organization_id"),
        ("end_user_email", "end_user_email"),
    ):
        if values.get(column) is not None:
            tags.setdefault(key, values[column])
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
    n = next(_sequence)
    values: dict[str, Any] = {
        "dedupe_key": f"dedupe-{n}",
        "webhook_type": "auth",
        "operation": "creation",
        "success": True,
        "environment": "prod",
        "integration_id": "github",
        "body": "{}",
        "outcome": "applied",
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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
