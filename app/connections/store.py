"""Storing connections: concurrency-safe upserts, attribution merges, tags and history.

Every writer (webhooks, reconcile, CSV import, the API's delete) goes through these functions,
so the rules hold whatever the source: attribution is merged and never erased, every tag is
indexed in ``connection_tags``, and every change is kept in ``connection_events``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Table, delete, insert
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.db.models import Connection, ConnectionEvent, ConnectionStatus, ConnectionTag
from app.db.types import utcnow

TAGS_TABLE: Table = ConnectionTag.metadata.tables["connection_tags"]
EVENTS_TABLE: Table = ConnectionEvent.metadata.tables["connection_events"]

MAX_TAG_KEY = 64
MAX_TAG_VALUE = 255
MAX_TEXT = 255


def clean_text(value: object, *, limit: int = MAX_TEXT) -> str | None:
    """A string fit for any column on both databases, or None.

    Postgres refuses NUL characters and lone surrogates, both of which valid JSON can carry.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    text = value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    text = text.strip()
    return text[:limit] if text else None


def clean_tags(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    tags: dict[str, str] = {}
    for raw_key, raw_value in value.items():
        key = clean_text(raw_key, limit=MAX_TAG_KEY)
        text = clean_text(raw_value, limit=4096)
        if key is not None and text is not None:
            tags[key] = text
    return tags


ATTRIBUTION_FIELDS = (
    "end_user_id",
    "end_user_email",
    "end_user_display_name",
    "organization_id",
    "organization_display_name",
)


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who owns a connection, as far as one source knows. Missing fields are None."""

    end_user_id: str | None = None
    end_user_email: str | None = None
    end_user_display_name: str | None = None
    organization_id: str | None = None
    organization_display_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_nango(cls, *, tags: object, end_user: object) -> Attribution:
        """Tags first (the current API), then the deprecated ``endUser``/``end_user`` object."""
        clean = clean_tags(tags)
        legacy: Mapping[str, Any] = end_user if isinstance(end_user, Mapping) else {}

        def pick(tag: str, *legacy_keys: str) -> str | None:
            if clean.get(tag):
                return clean_text(clean[tag])
            for name in legacy_keys:
                found = clean_text(legacy.get(name))
                if found:
                    return found
            return None

        return cls(
            end_user_id=pick("end_user_id", "endUserId", "id"),
            end_user_email=pick("end_user_email", "endUserEmail", "email"),
            end_user_display_name=pick("end_user_display_name", "displayName", "display_name"),
            organization_id=pick("organization_id", "organizationId", "organization_id"),
            organization_display_name=pick("organization_display_name"),
            tags=clean,
        )


@cache
def _insert_connection(dialect: str) -> Any:
    """Built once: building an INSERT per request costs more CPU than sending it."""
    insert = postgres_insert if dialect == "postgresql" else sqlite_insert
    return (
        insert(Connection)
        .on_conflict_do_nothing(index_elements=["environment", "integration_id", "connection_id"])
        .returning(Connection)
        .execution_options(populate_existing=True)
    )


async def lock_connection(
    session: AsyncSession,
    *,
    environment: str,
    integration_id: str,
    connection_id: str,
    provider: str | None = None,
    auth_mode: str | None = None,
    status: ConnectionStatus = ConnectionStatus.ACTIVE,
    attribution: Attribution | None = None,
    now: datetime | None = None,
) -> tuple[Connection, bool]:
    """Return the connection, creating it if missing, locked for the rest of the transaction.

    ``INSERT .. ON CONFLICT DO NOTHING`` then ``SELECT .. FOR UPDATE`` makes concurrent first
    events for one connection create exactly one row and apply one after the other. A row this
    transaction inserted comes back from ``RETURNING`` and needs no ``FOR UPDATE``: until commit
    no other transaction sees it, and a concurrent insert of the same key waits on it. A new
    row is inserted with ``attribution`` (and its tags indexed) at once.
    """
    values = new_connection_row(
        environment=environment,
        integration_id=integration_id,
        connection_id=connection_id,
        provider=provider,
        auth_mode=auth_mode,
        status=status,
        attribution=attribution,
        now=now or utcnow(),
    )
    for inserted in await insert_connections(session, rows=[values]):
        return inserted, True
    query = (
        select(Connection)
        .where(
            col(Connection.environment) == environment,
            col(Connection.integration_id) == integration_id,
            col(Connection.connection_id) == connection_id,
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    connection = (await session.execute(query)).scalar_one()
    connection.provider = provider or connection.provider
    connection.auth_mode = auth_mode or connection.auth_mode
    return connection, False


async def insert_connections(
    session: AsyncSession, *, rows: list[dict[str, Any]]
) -> list[Connection]:
    """Insert new connections (and index their tags) in two statements; rows whose key exists
    already are skipped and not returned: the caller locks and updates those instead."""
    statement = _insert_connection(session.get_bind().dialect.name)
    inserted = list((await session.execute(statement, rows)).scalars())
    tag_rows = [row for connection in inserted for row in _tag_rows(connection)]
    if tag_rows:
        await session.execute(insert(TAGS_TABLE), tag_rows)
    return inserted


def new_connection_row(
    *,
    environment: str,
    integration_id: str,
    connection_id: str,
    provider: str | None,
    auth_mode: str | None,
    status: ConnectionStatus,
    attribution: Attribution | None,
    now: datetime,
) -> dict[str, Any]:
    owner = attribution or Attribution()
    return {
        "environment": environment,
        "integration_id": integration_id,
        "connection_id": connection_id,
        "provider": provider,
        "auth_mode": auth_mode,
        **{name: getattr(owner, name) for name in ATTRIBUTION_FIELDS},
        "tags": owner.tags,
        "status": status,
        "created_at": now,
        "updated_at": now,
    }


async def merge_attribution(
    session: AsyncSession,
    *,
    connection: Connection,
    attribution: Attribution,
) -> bool:
    """Fill in what the source knows; never erase what is stored. Returns True if changed.

    For a stored connection: a new one gets its owner and tags when it is inserted.
    """
    changed = False
    for name in ATTRIBUTION_FIELDS:
        value = getattr(attribution, name)
        if value is not None and getattr(connection, name) != value:
            setattr(connection, name, value)
            changed = True
    merged = {**(connection.tags or {}), **attribution.tags}
    if merged != (connection.tags or {}):
        connection.tags = merged
        await _reindex_tags(session, connection=connection)
        changed = True
    return changed


def _tag_rows(connection: Connection) -> list[dict[str, Any]]:
    return [
        {"connection_pk": connection.id, "key": key, "value": value}
        for key, value in (connection.tags or {}).items()
        # Over-long values stay in the JSON tags but are not indexed for tag[KEY]=VALUE lookups.
        if len(key) <= MAX_TAG_KEY and len(value) <= MAX_TAG_VALUE
    ]


async def _reindex_tags(session: AsyncSession, *, connection: Connection) -> None:
    assert connection.id is not None
    await session.execute(
        delete(ConnectionTag).where(col(ConnectionTag.connection_pk) == connection.id)
    )
    rows = _tag_rows(connection)
    if rows:
        # The table, not the ORM entity: a plain executemany, without the ORM's bulk machinery.
        await session.execute(insert(TAGS_TABLE), rows)


async def change_status(
    session: AsyncSession,
    *,
    connection: Connection,
    status: ConnectionStatus,
    source: str,
    action: str,
    success: bool | None = None,
    error_type: str | None = None,
    error_description: str | None = None,
    delivery_id: int | None = None,
    detail: dict[str, Any] | None = None,
    created: bool = False,
    now: datetime | None = None,
) -> None:
    """Move a connection to ``status`` (or confirm it) and record why in its history.

    ``created`` says the connection was inserted in this transaction: its history then starts
    from no status.
    """
    now = now or utcnow()
    previous: str | None = None if created else connection.status
    connection.status = status
    if status == ConnectionStatus.ACTIVE:
        connection.error_type = connection.error_description = None
        connection.error_since = None
    elif status == ConnectionStatus.AUTH_ERROR:
        if previous != ConnectionStatus.AUTH_ERROR or connection.error_since is None:
            connection.error_since = now
        connection.error_type = error_type
        connection.error_description = error_description
    elif status == ConnectionStatus.DELETED and connection.deleted_at is None:
        connection.deleted_at = now
    connection.updated_at = now
    await record_event(
        session,
        connection=connection,
        source=source,
        action=action,
        success=success,
        from_status=previous,
        to_status=status,
        delivery_id=delivery_id,
        detail=detail,
        now=now,
    )


async def record_event(
    session: AsyncSession,
    *,
    connection: Connection,
    source: str,
    action: str,
    success: bool | None = None,
    from_status: str | None = None,
    to_status: str | None = None,
    delivery_id: int | None = None,
    detail: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    assert connection.id is not None
    await record_events(
        session,
        rows=[
            {
                "connection_pk": connection.id,
                "delivery_id": delivery_id,
                "source": source,
                "action": action,
                "success": success,
                "from_status": from_status,
                "to_status": to_status,
                "detail": detail or {},
                "created_at": now or utcnow(),
            }
        ],
    )


async def record_events(session: AsyncSession, *, rows: list[dict[str, Any]]) -> None:
    """History rows, as plain inserts: they are never read back in the transaction."""
    await session.execute(insert(EVENTS_TABLE), rows)
