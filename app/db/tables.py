"""The schema: every table, declared once with SQLModel, for Alembic and the drift test.

The code does not read or write through these classes: statements go straight to the driver
(``app.db.database``) and rows come back as the records of ``app.connections.model`` and the
other modules. Every schema change is an Alembic revision in ``migrations/``;
``tests/db/test_migrations.py`` fails when these tables and the migrations disagree, and
``tests/db/test_records.py`` when a record and its table do.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from app.db.types import JSONDocument, NullableJSONDocument, UTCDateTime, utcnow

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT on Postgres; SQLite only makes "INTEGER PRIMARY KEY" an auto-incrementing rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _id_column() -> Any:
    return Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))


def _time(*, nullable: bool = False, index: bool = False) -> Any:
    default = None if nullable else utcnow
    return Field(
        default_factory=default,
        sa_column=Column(UTCDateTime(), nullable=nullable, index=index),
    )


class ConnectionTable(SQLModel, table=True):
    __tablename__ = "connections"
    __table_args__ = (
        UniqueConstraint("environment", "integration_id", "connection_id"),
        Index("ix_connections_end_user_id_id", "end_user_id", "id"),
        Index("ix_connections_organization_id_id", "organization_id", "id"),
        Index("ix_connections_integration_id_id", "integration_id", "id"),
        Index("ix_connections_connection_id", "connection_id"),
        Index("ix_connections_status_id", "status", "id"),
    )

    id: int | None = _id_column()
    environment: str = Field(max_length=255)
    integration_id: str = Field(max_length=255)
    connection_id: str = Field(max_length=255)
    provider: str | None = Field(default=None, max_length=255)
    auth_mode: str | None = Field(default=None, max_length=64)
    end_user_id: str | None = Field(default=None, max_length=255)
    end_user_email: str | None = Field(default=None, max_length=255)
    end_user_display_name: str | None = Field(default=None, max_length=255)
    organization_id: str | None = Field(default=None, max_length=255)
    organization_display_name: str | None = Field(default=None, max_length=255)
    tags: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSONDocument, nullable=False)
    )
    status: str = Field(default="active", max_length=16)  # app.connections.model.ConnectionStatus
    error_type: str | None = Field(default=None, max_length=255)
    error_description: str | None = Field(default=None, sa_column=Column(Text))
    error_since: datetime | None = _time(nullable=True)
    last_sync_name: str | None = Field(default=None, max_length=255)
    last_sync_model: str | None = Field(default=None, max_length=255)
    last_sync_success: bool | None = None
    last_sync_at: datetime | None = _time(nullable=True)
    last_sync_error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = _time()
    updated_at: datetime = _time()
    deleted_at: datetime | None = _time(nullable=True)
    # From Nango's GET /connections/{id} (secret-named keys dropped) and the listing; NULL until
    # fetched. "metadata" is SQLAlchemy's own attribute name, hence nango_metadata here.
    connection_config: dict[str, Any] | None = Field(
        default=None, sa_column=Column(NullableJSONDocument, nullable=True)
    )
    nango_metadata: dict[str, Any] | None = Field(
        default=None, sa_column=Column("metadata", NullableJSONDocument, nullable=True)
    )


class ConnectionTagTable(SQLModel, table=True):
    """One row per tag, so ``tag[KEY]=VALUE`` lookups use an index on both databases."""

    __tablename__ = "connection_tags"
    __table_args__ = (
        Index("ix_connection_tags_key_value_connection", "key", "value", "connection_pk"),
    )

    connection_pk: int = Field(
        sa_column=Column(BigId, ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True)
    )
    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=255)


class DeliveryTable(SQLModel, table=True):
    """The inbox: every verified webhook delivery, stored before it is acknowledged."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_outcome_id", "outcome", "id"),)

    id: int | None = _id_column()
    # SHA-256 of the raw body; a repeat outside the dedupe window archives the older row's key
    # with a "#<id>" suffix, so the constraint stays unique.
    dedupe_key: str = Field(max_length=96, unique=True)
    received_at: datetime = _time(index=True)
    webhook_type: str | None = Field(default=None, max_length=64, index=True)
    operation: str | None = Field(default=None, max_length=64)
    success: bool | None = None
    environment: str | None = Field(default=None, max_length=255)
    integration_id: str | None = Field(default=None, max_length=255)
    connection_id: str | None = Field(default=None, max_length=255, index=True)
    body: str = Field(sa_column=Column(Text, nullable=False))
    headers: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSONDocument, nullable=False)
    )
    outcome: str = Field(default="recorded", max_length=16, index=True)  # DeliveryOutcome
    error: str | None = Field(default=None, sa_column=Column(Text))
    processed_at: datetime | None = _time(nullable=True)
    attempts: int = 0


class ConnectionEventTable(SQLModel, table=True):
    """A connection's history: every state change, and what caused it."""

    __tablename__ = "connection_events"
    __table_args__ = (Index("ix_connection_events_connection_pk_id", "connection_pk", "id"),)

    id: int | None = _id_column()
    connection_pk: int = Field(
        sa_column=Column(BigId, ForeignKey("connections.id", ondelete="CASCADE"), nullable=False)
    )
    delivery_id: int | None = Field(
        default=None,
        sa_column=Column(BigId, ForeignKey("deliveries.id", ondelete="SET NULL"), nullable=True),
    )
    source: str = Field(max_length=32)  # webhook, reconcile, api, import
    action: str = Field(max_length=64)  # creation, override, refresh, deletion, sync, ...
    success: bool | None = None
    from_status: str | None = Field(default=None, max_length=16)
    to_status: str | None = Field(default=None, max_length=16)
    detail: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSONDocument, nullable=False)
    )
    created_at: datetime = _time()


class FeedEventTable(SQLModel, table=True):
    """The change feed: one row per change to a connection (``app.connections.feed``).

    No foreign keys: the feed is an append-only log that outlives the rows it describes. The
    filter columns are copied from the connection so each filter is one index range.
    """

    __tablename__ = "feed_events"
    __table_args__ = (
        Index("ix_feed_events_type_id", "type", "id"),
        Index("ix_feed_events_end_user_id_id", "end_user_id", "id"),
        Index("ix_feed_events_organization_id_id", "organization_id", "id"),
        Index("ix_feed_events_integration_id_id", "integration_id", "id"),
        Index("ix_feed_events_connection_pk_id", "connection_pk", "id"),
    )

    id: int | None = _id_column()
    type: str = Field(max_length=64)  # app.connections.feed.EventType
    occurred_at: datetime = _time()
    source: str = Field(max_length=32)  # webhook, reconcile, api, import
    delivery_id: int | None = Field(default=None, sa_column=Column(BigId, nullable=True))
    connection_pk: int = Field(sa_column=Column(BigId, nullable=False))
    environment: str = Field(max_length=255)
    integration_id: str = Field(max_length=255)
    end_user_id: str | None = Field(default=None, max_length=255)
    organization_id: str | None = Field(default=None, max_length=255)
    connection: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSONDocument, nullable=False)
    )


class ConnectSessionTable(SQLModel, table=True):
    """A Connect session this service opened, so its outcome can be asked for by its ID."""

    __tablename__ = "connect_sessions"

    session_id: str = Field(primary_key=True, max_length=64)
    environment: str = Field(max_length=255)
    end_user_id: str | None = Field(default=None, max_length=255)
    organization_id: str | None = Field(default=None, max_length=255)
    created_at: datetime = _time()
    expires_at: datetime = _time()


class ApiKeyTable(SQLModel, table=True):
    """Keys managed with ``nango-registry api-keys``; only a SHA-256 of the secret is stored."""

    __tablename__ = "api_keys"

    id: int | None = _id_column()
    name: str = Field(max_length=128, unique=True)
    key_hash: str = Field(max_length=64, unique=True)
    read_only: bool = False
    created_at: datetime = _time()
    last_used_at: datetime | None = _time(nullable=True)
    revoked_at: datetime | None = _time(nullable=True)


class ReconcileRunTable(SQLModel, table=True):
    __tablename__ = "reconcile_runs"

    id: int | None = _id_column()
    trigger: str = Field(max_length=32)  # api, cli, schedule
    started_at: datetime = _time()
    finished_at: datetime | None = _time(nullable=True)
    status: str = Field(default="running", max_length=16)  # running, succeeded, failed
    counts: dict[str, int] = Field(
        default_factory=dict, sa_column=Column(JSONDocument, nullable=False)
    )
    error: str | None = Field(default=None, sa_column=Column(Text))


class LeaseTable(SQLModel, table=True):
    """A named, expiring lock that works on SQLite and Postgres alike (one reconciler at a time)."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    expires_at: datetime = _time()


class SubscriptionTable(SQLModel, table=True):
    """A consumer's push endpoint (issue 16). Its signing secret is derived, never stored: see
    ``app.subscriptions.signing``."""

    __tablename__ = "subscriptions"

    id: int | None = _id_column()
    url: str = Field(sa_column=Column(Text, nullable=False))
    # null: every type; else a JSON array of event types.
    event_types: list[str] | None = Field(
        default=None, sa_column=Column(JSONDocument, nullable=True)
    )
    end_user_id: str | None = Field(default=None, max_length=255)
    organization_id: str | None = Field(default=None, max_length=255)
    integration_id: str | None = Field(default=None, max_length=255)
    status: str = Field(default="active", max_length=16)  # active, paused, disabled
    # Random, not secret: mixed into the derived secret so no two subscriptions share one.
    secret_salt: str = Field(max_length=64)
    # SHA-256 of the derived secret: tells the dispatcher that SECRET_KEY has changed.
    secret_check: str = Field(max_length=64)
    created_at: datetime = _time()
    updated_at: datetime = _time()
    failing_since: datetime | None = _time(nullable=True)
    disabled_at: datetime | None = _time(nullable=True)


class SubscriptionDeliveryTable(SQLModel, table=True):
    """The outbox: one row per (subscription, event) to send, until it is sent or given up."""

    __tablename__ = "subscription_deliveries"
    __table_args__ = (
        # What is due, and what an event must wait for (an earlier one of its connection).
        Index(
            "ix_subscription_deliveries_pending_due",
            "next_attempt_at",
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        Index(
            "ix_subscription_deliveries_pending_order",
            "subscription_id",
            "connection_pk",
            "id",
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_subscription_deliveries_subscription_id_event_id", "subscription_id", "event_id"),
    )

    id: int | None = _id_column()
    subscription_id: int = Field(
        sa_column=Column(BigId, ForeignKey("subscriptions.id", ondelete="CASCADE"), nullable=False)
    )
    event_id: int = Field(sa_column=Column(BigId, nullable=False))
    connection_pk: int | None = Field(default=None, sa_column=Column(BigId, nullable=True))
    status: str = Field(default="pending", max_length=16)  # pending, succeeded, failed
    tries: int = 0
    next_attempt_at: datetime = _time()
    # Held by one dispatcher while it sends; a holder that died frees it by expiry.
    lease_until: datetime | None = _time(nullable=True)
    lease_holder: str | None = Field(default=None, max_length=128)
    created_at: datetime = _time()
    finished_at: datetime | None = _time(nullable=True)


class SubscriptionAttemptTable(SQLModel, table=True):
    """One HTTP request to a subscriber, and how it ended."""

    __tablename__ = "subscription_attempts"
    __table_args__ = (
        Index("ix_subscription_attempts_subscription_id_id", "subscription_id", "id"),
    )

    id: int | None = _id_column()
    subscription_id: int = Field(
        sa_column=Column(BigId, ForeignKey("subscriptions.id", ondelete="CASCADE"), nullable=False)
    )
    delivery_id: int = Field(
        sa_column=Column(
            BigId,
            ForeignKey("subscription_deliveries.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    event_id: int = Field(sa_column=Column(BigId, nullable=False))
    try_number: int
    attempted_at: datetime = _time()
    outcome: str = Field(max_length=16)  # succeeded, failed, timeout, error
    status_code: int | None = None
    latency_ms: int
    response_body: str | None = Field(default=None, sa_column=Column(Text))
    error: str | None = Field(default=None, max_length=255)
