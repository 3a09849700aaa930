"""Writing connections: concurrency-safe upserts, attribution merges, tags and history.

Every writer (webhooks, reconcile, CSV import, the API) goes through these functions, so the
rules hold whatever the source: attribution is merged and never erased, every tag is indexed in
``connection_tags``, every change is kept in ``connection_events`` (the history), and every
history row publishes its change-feed events (``app.connections.feed``) in the same transaction.

A connection is changed in memory and written back with ``save``, one UPDATE of every mutable
column: simpler to follow than per-field statements, and as cheap for a row this narrow.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from app.connections import feed
from app.connections.model import (
    ATTRIBUTION_FIELDS,
    COLUMNS,
    CONNECTION_FIELDS,
    MAX_TAG_KEY,
    MAX_TAG_VALUE,
    Attribution,
    Connection,
    ConnectionStatus,
)
from app.db.database import Transaction, sql, together
from app.db.types import utcnow

# What a new row is inserted with; the rest of the columns start empty.
NEW_COLUMNS = (
    "environment",
    "integration_id",
    "connection_id",
    "provider",
    "auth_mode",
    *ATTRIBUTION_FIELDS,
    "tags",
    "status",
    "error_type",
    "error_description",
    "error_since",
    "created_at",
    "updated_at",
    "deleted_at",
    "metadata",
)
MUTABLE_COLUMNS = (
    "provider",
    "auth_mode",
    *ATTRIBUTION_FIELDS,
    "tags",
    "status",
    "error_type",
    "error_description",
    "error_since",
    "last_sync_name",
    "last_sync_model",
    "last_sync_success",
    "last_sync_at",
    "last_sync_error",
    "updated_at",
    "deleted_at",
    "connection_config",
    "metadata",
)

_INSERT_CONNECTION = (
    f"INSERT INTO connections ({', '.join(NEW_COLUMNS)})"  # noqa: S608 (fixed column names)
    f" VALUES ({', '.join(':' + name for name in NEW_COLUMNS)})"
    " ON CONFLICT (environment, integration_id, connection_id) DO NOTHING"
    f" RETURNING {COLUMNS}"
)
# Tags over the index's limits stay in the JSON tags but are not indexed for tag[KEY]=VALUE.
_INDEXED_TAG = f"length(key) <= {MAX_TAG_KEY} AND length(value) <= {MAX_TAG_VALUE}"
# Postgres: a CTE that indexes the tags of the rows a CTE named ``inserted`` inserted.
INDEX_INSERTED = (
    "indexed AS (INSERT INTO connection_tags (connection_pk, key, value)"  # noqa: S608
    f" SELECT inserted.id, key, value FROM inserted, jsonb_each_text(inserted.tags)"
    f" WHERE {_INDEXED_TAG})"
)
# The new row and, last, whether its tags were indexed by the same statement: on Postgres they
# are (a data-modifying CTE: one round trip, not two); SQLite has no such CTEs, and its tags
# statement reaches the writer thread with the next one anyway (``insert_connection``).
INSERT_CONNECTION = sql(
    f"{_INSERT_CONNECTION}, false",
    postgres=(
        f"WITH inserted AS ({_INSERT_CONNECTION}), {INDEX_INSERTED}"  # noqa: S608 (fixed names)
        f" SELECT {COLUMNS}, true FROM inserted"
    ),
)
LOCK_CONNECTION = sql(
    f"SELECT {COLUMNS} FROM connections"  # noqa: S608
    " WHERE environment = :environment AND integration_id = :integration_id"
    " AND connection_id = :connection_id",
    lock=True,
)
LOCK_BY_PK = sql(f"SELECT {COLUMNS} FROM connections WHERE id = :id", lock=True)  # noqa: S608
SAVE_CONNECTION = sql(
    "UPDATE connections SET "  # noqa: S608
    + ", ".join(f"{name} = :{name}" for name in MUTABLE_COLUMNS)
    + " WHERE id = :id"
)
DELETE_TAGS = sql("DELETE FROM connection_tags WHERE connection_pk = :connection_pk")
# Every tag of a connection in one statement, from its JSON tags through the database's JSON
# table function (the one place the two dialects need their own words: json_each on SQLite,
# jsonb_each_text on Postgres). Over-long keys and values stay in the JSON tags but are not
# indexed for tag[KEY]=VALUE lookups.
_INDEX_TAGS = (
    "INSERT INTO connection_tags (connection_pk, key, value)"  # noqa: S608 (fixed names)
    " SELECT :connection_pk, key, value FROM {function}(:tags)"
    f" WHERE {_INDEXED_TAG}"
)
INDEX_TAGS = sql(
    _INDEX_TAGS.format(function="json_each"),
    postgres=_INDEX_TAGS.format(function="jsonb_each_text"),
)
HISTORY_COLUMNS = (
    "connection_pk",
    "delivery_id",
    "source",
    "action",
    "success",
    "from_status",
    "to_status",
    "detail",
    "created_at",
)
_INSERT_HISTORY = (
    f"INSERT INTO connection_events ({', '.join(HISTORY_COLUMNS)})"  # noqa: S608
    f" VALUES ({', '.join(':' + name for name in HISTORY_COLUMNS)})"
)
INSERT_HISTORY = sql(_INSERT_HISTORY)
# A history row and the one feed event it makes (the common case of a change) in one round trip.
INSERT_HISTORY_AND_EVENT = together(
    feed.postgres_append_after(f"history AS ({_INSERT_HISTORY})"), INSERT_HISTORY, feed.APPEND
)


def new_connection_values(
    *,
    environment: str,
    integration_id: str,
    connection_id: str,
    provider: str | None = None,
    auth_mode: str | None = None,
    status: str = ConnectionStatus.ACTIVE,
    attribution: Attribution | None = None,
    error_type: str | None = None,
    error_description: str | None = None,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The values a connection is inserted with: its owner, tags and status from the start
    (and its metadata when the source knows it: Nango's listing does)."""
    owner = attribution or Attribution()
    now = now or utcnow()
    broken = status == ConnectionStatus.AUTH_ERROR
    return {
        "environment": environment,
        "integration_id": integration_id,
        "connection_id": connection_id,
        "provider": provider,
        "auth_mode": auth_mode,
        "end_user_id": owner.end_user_id,
        "end_user_email": owner.end_user_email,
        "end_user_display_name": owner.end_user_display_name,
        "organization_id": owner.organization_id,
        "organization_display_name": owner.organization_display_name,
        "tags": owner.tags_with_owner,
        "status": str(status),
        "error_type": error_type if broken else None,
        "error_description": error_description if broken else None,
        "error_since": now if broken else None,
        "created_at": now,
        "updated_at": now,
        # A deletion for a connection never seen leaves a tombstone.
        "deleted_at": now if status == ConnectionStatus.DELETED else None,
        "metadata": metadata,
    }


_UNSET = dict.fromkeys(CONNECTION_FIELDS)


def unsaved(values: dict[str, Any]) -> Connection:
    """The connection ``values`` (from ``new_connection_values``) make once inserted, with no
    ID yet (0): what its history row and feed event are built from before the insert."""
    return Connection(**{**_UNSET, **values, "id": 0})


async def insert_connection(tx: Transaction, values: dict[str, Any]) -> Connection | None:
    """Insert a new connection with its tags; None when its key exists already."""
    row = await tx.fetchone(INSERT_CONNECTION, values)
    if row is None:
        return None
    *columns, tags_indexed = row
    connection = Connection(*columns)
    if connection.tags and not tags_indexed:
        await _index_tags(tx, connection)
    return connection


async def lock_connection(
    tx: Transaction, values: dict[str, Any], *, insert: bool = True
) -> tuple[Connection, bool]:
    """The connection ``values`` names, created from them if missing, locked until commit.

    ``INSERT .. ON CONFLICT DO NOTHING`` then ``SELECT .. FOR UPDATE`` makes concurrent first
    events for one connection create exactly one row and apply one after the other. A row this
    transaction inserted needs no lock: until commit no other transaction sees it, and a
    concurrent insert of the same key waits on it. ``insert=False``: this transaction's insert
    found the row stored already, so only the lock is left. Returns ``(connection, created)``.
    """
    if insert:
        inserted = await insert_connection(tx, values)
        if inserted is not None:
            return inserted, True
    row = await tx.fetchone(LOCK_CONNECTION, values)
    if row is None:  # deleted between the two statements (only a test does that)
        raise LookupError("the connection vanished while it was being locked")
    return Connection(*row), False


async def lock_connection_by_pk(tx: Transaction, pk: int) -> Connection | None:
    row = await tx.fetchone(LOCK_BY_PK, {"id": pk})
    return None if row is None else Connection(*row)


async def save(tx: Transaction, connection: Connection) -> None:
    """Write back every mutable column of a connection changed in memory."""
    values = {name: getattr(connection, name) for name in MUTABLE_COLUMNS}
    values["id"] = connection.id
    await tx.execute(SAVE_CONNECTION, values)


async def _index_tags(tx: Transaction, connection: Connection) -> None:
    await tx.execute(INDEX_TAGS, {"connection_pk": connection.id, "tags": connection.tags})


async def reindex_tags(tx: Transaction, connection: Connection) -> None:
    await tx.execute(DELETE_TAGS, {"connection_pk": connection.id})
    if connection.tags:
        await _index_tags(tx, connection)


def owner_changes(connection: Connection, attribution: Attribution) -> dict[str, Any]:
    """What merging ``attribution`` into ``connection`` would change: the owner fields it knows
    that differ, and ``tags`` when the merged tags differ. Nothing stored is ever erased."""
    changes: dict[str, Any] = {
        name: value
        for name in ATTRIBUTION_FIELDS
        if (value := getattr(attribution, name)) is not None and getattr(connection, name) != value
    }
    merged = {**connection.tags, **attribution.tags_with_owner}
    if merged != connection.tags:
        changes["tags"] = merged
    return changes


def merge_owner(connection: Connection, attribution: Attribution) -> tuple[bool, bool]:
    """Fill in what the source knows, in memory (``owner_changes``).

    Returns ``(changed, tags_changed)``: the caller saves, and re-indexes the tags if they
    changed (``merge_attribution`` does both).
    """
    changes = owner_changes(connection, attribution)
    for name, value in changes.items():
        setattr(connection, name, value)
    return bool(changes), "tags" in changes


async def merge_attribution(
    tx: Transaction, connection: Connection, attribution: Attribution
) -> bool:
    """``merge_owner``, with the tags re-indexed; the caller saves. Returns True if changed."""
    changed, tags_changed = merge_owner(connection, attribution)
    if tags_changed:
        await reindex_tags(tx, connection)
    return changed


def set_status(
    connection: Connection,
    status: str,
    *,
    error_type: str | None = None,
    error_description: str | None = None,
    now: datetime,
) -> str:
    """Move a connection to ``status`` in memory; returns the status it had."""
    previous = connection.status
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
    return previous


def history_row(
    connection: Connection,
    *,
    source: str,
    action: str,
    success: bool | None = None,
    from_status: str | None = None,
    to_status: str | None = None,
    delivery_id: int | None = None,
    detail: dict[str, Any] | None = None,
    now: datetime | None = None,
    owner_changed: bool = False,
) -> dict[str, Any]:
    """A history row; it also carries the connection (as it will be at ``record_history``) and
    whether its owner changed, for the change feed."""
    return {
        "connection_pk": connection.id,
        "delivery_id": delivery_id,
        "source": source,
        "action": action,
        "success": success,
        "from_status": from_status,
        "to_status": to_status,
        "detail": detail or {},
        "created_at": now or utcnow(),
        feed.CONNECTION: connection,
        feed.OWNER_CHANGED: owner_changed,
    }


async def record_history(tx: Transaction, rows: Sequence[dict[str, Any]]) -> None:
    """Write history rows and the change-feed events they make: the one place both are written,
    so every source publishes its changes."""
    stored = [{name: row[name] for name in HISTORY_COLUMNS} for row in rows]
    events = feed.events_for(rows)
    if len(stored) == 1 and len(events) == 1:
        # The names the two share (connection_pk, delivery_id, source) hold the same values.
        await tx.execute(INSERT_HISTORY_AND_EVENT, {**stored[0], **events[0]})
        feed.appended(tx, events)
        return
    if len(stored) == 1:
        await tx.execute(INSERT_HISTORY, stored[0])
    else:
        await tx.executemany(INSERT_HISTORY, stored)
    await feed.append(tx, events)


async def change_status(
    tx: Transaction,
    connection: Connection,
    status: str,
    *,
    source: str,
    action: str,
    success: bool | None = None,
    error_type: str | None = None,
    error_description: str | None = None,
    delivery_id: int | None = None,
    detail: dict[str, Any] | None = None,
    now: datetime | None = None,
    owner_changed: bool = False,
) -> None:
    """Move a stored connection to ``status`` (or confirm it), save it, record why."""
    now = now or utcnow()
    previous = set_status(
        connection, status, error_type=error_type, error_description=error_description, now=now
    )
    await save(tx, connection)
    await record_history(
        tx,
        [
            history_row(
                connection,
                source=source,
                action=action,
                success=success,
                from_status=previous,
                to_status=status,
                delivery_id=delivery_id,
                detail=detail,
                now=now,
                owner_changed=owner_changed,
            )
        ],
    )
