"""The change feed: every change to a connection, as numbered events for consumers.

Events are appended by the store (``store.record_history``) in the transaction that makes the
change: every history row is read for what it means to a consumer (a new connection, broken
credentials, a new owner...) and becomes zero, one or two events carrying the connection object
as it is after the change (``app.connections.public``). Whatever the source (webhooks,
reconcile, the API, the CSV import), a change publishes itself; a duplicate delivery changes
nothing and so publishes nothing.

Ordering on Postgres: IDs come from a sequence when a row is inserted, but transactions commit
in any order, so a reader could see event 12 before event 11 commits, move past 11 and never
see it. Writers therefore hold a shared advisory lock from their append to their commit, and a
reader first notes the highest visible ID and then takes the same lock exclusively for an
instant: once it has it, every transaction that had taken an ID up to that mark has ended, and
events up to the mark are safe to hand out. Writers never wait for each other; a reader waits
only for the appends in flight. On SQLite one writer commits at a time, so IDs commit in order.

Once a transaction that appended has committed, the database layer sends ``NOTIFY
feed_events`` on Postgres (``PostgresDatabase.feed_committed``: one NOTIFY for all the commits
of 10 ms, not one per transaction), which wakes streams, long polls and dispatchers in every
process: each process's ``FeedSignal`` hears it (``app.connections.feed_signal``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

from app.connections.model import ATTRIBUTION_FIELDS, Connection, ConnectionStatus
from app.connections.public import connection_json
from app.db.database import Database, Statement, sql
from app.db.database import Transaction as Tx
from app.metrics import FEED_EVENTS_APPENDED

# Any constant shared by writers and readers (pg_advisory_xact_lock's bigint key space).
ORDER_LOCK = 7_236_066_108_102_911_092
# Private keys of a history row (``store.history_row``): the connection it is about and
# whether its owner changed; not columns of ``connection_events``.
CONNECTION = "_connection"
OWNER_CHANGED = "_owner_changed"


class EventType(StrEnum):
    CREATED = "connection.created"
    ATTRIBUTED = "connection.attributed"
    AUTH_ERROR = "connection.auth_error"
    RECOVERED = "connection.recovered"
    DELETED = "connection.deleted"
    RESTORED = "connection.restored"
    METADATA_UPDATED = "connection.metadata_updated"
    SYNC_FAILED = "connection.sync_failed"


# History actions that set or change the owner (reconcile's "tags", the import's "attribution").
OWNER_ACTIONS = frozenset({"tags", "attribution"})
# Writes of a connection's details or owner (the API's, refreshes from Nango) record what they
# changed in ``detail.changed``, by field name.
OWNER_CHANGES = frozenset({*ATTRIBUTION_FIELDS, "owner", "tags"})
DETAIL_CHANGES = frozenset({"connection_config", "metadata"})


def _status_type(from_status: str | None, to_status: str | None) -> list[EventType]:
    if to_status is None or from_status == to_status:
        return []
    if to_status == ConnectionStatus.DELETED:
        return [EventType.DELETED]
    if from_status is None:
        broken = to_status == ConnectionStatus.AUTH_ERROR
        return [EventType.CREATED, EventType.AUTH_ERROR] if broken else [EventType.CREATED]
    if from_status == ConnectionStatus.DELETED:
        return [EventType.RESTORED]
    if to_status == ConnectionStatus.AUTH_ERROR:
        return [EventType.AUTH_ERROR]
    return [EventType.RECOVERED]


def _changed_types(row: Mapping[str, Any], changed: Sequence[str]) -> list[EventType]:
    types = _status_type(row["from_status"], row["to_status"]) if row["from_status"] else []
    if OWNER_CHANGES.intersection(changed):
        types.append(EventType.ATTRIBUTED)
    if DETAIL_CHANGES.intersection(changed):
        types.append(EventType.METADATA_UPDATED)
    return types


def event_types(row: Mapping[str, Any]) -> list[EventType]:
    """What one history row means to a consumer: no event, one, or (rarely) two."""
    action = row["action"]
    if action == "sync":
        return [] if row["success"] is not False else [EventType.SYNC_FAILED]
    detail = row.get("detail")
    changed = detail.get("changed") if isinstance(detail, Mapping) else None
    if isinstance(changed, list):
        return _changed_types(row, changed)
    types = _status_type(row["from_status"], row["to_status"])
    # A new connection's owner is part of its creation, not news of its own.
    created = row["from_status"] is None and bool(types)
    if not created and (row.get(OWNER_CHANGED) or action in OWNER_ACTIONS):
        types.append(EventType.ATTRIBUTED)
    return types


APPEND_COLUMNS = (
    "type",
    "occurred_at",
    "source",
    "delivery_id",
    "connection_pk",
    "environment",
    "integration_id",
    "end_user_id",
    "organization_id",
    "connection",
)
# Casts: in INSERT .. SELECT, Postgres has no column to infer a parameter's type from.
_CASTS = ("text", "timestamptz", "text", "bigint", "bigint", "text", "text", "text", "text")
_PG_VALUES = ", ".join(
    f":{name}::{cast}" for name, cast in zip(APPEND_COLUMNS, (*_CASTS, "jsonb"), strict=True)
)
# Postgres: a CTE that takes the order lock (see above); an append selects FROM it, so the lock
# is held before the row's ID is drawn.
ORDERED = f"ordered AS (SELECT pg_advisory_xact_lock_shared({ORDER_LOCK}))"
# On Postgres the order lock (held until commit) and the row in one statement, one round trip.
_ORDERED_APPEND = (
    f"{ORDERED} INSERT INTO feed_events ({', '.join(APPEND_COLUMNS)})"  # noqa: S608 (fixed names)
    f" SELECT {_PG_VALUES} FROM ordered"
)
APPEND = sql(
    f"INSERT INTO feed_events ({', '.join(APPEND_COLUMNS)})"  # noqa: S608 (fixed names)
    f" VALUES ({', '.join(':' + name for name in APPEND_COLUMNS)})",
    postgres=f"WITH {_ORDERED_APPEND}",
)


def postgres_append_after(cte: str) -> str:
    """``APPEND`` on Postgres with ``cte`` (``name AS (statement)``) run before it, in the same
    statement."""
    return f"WITH {cte}, {_ORDERED_APPEND}"


def _event_row(
    row: Mapping[str, Any], connection: Connection, kind: EventType, public: dict[str, Any]
) -> dict[str, Any]:
    return {
        "type": kind.value,
        "occurred_at": row["created_at"],
        "source": row["source"],
        "delivery_id": row["delivery_id"],
        "connection_pk": connection.id,
        "environment": connection.environment,
        "integration_id": connection.integration_id,
        "end_user_id": connection.end_user_id,
        "organization_id": connection.organization_id,
        "connection": public,
    }


def events_for(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The feed rows a batch of history rows makes, in order."""
    appended = []
    for row in history:
        connection = row.get(CONNECTION)
        if connection is None:
            continue
        kinds = event_types(row)
        if kinds:
            public = connection_json(connection)
            appended += [_event_row(row, connection, kind, public) for kind in kinds]
    return appended


async def append(tx: Tx, rows: Sequence[dict[str, Any]]) -> None:
    """Append ``rows`` (from ``events_for``), in the caller's transaction."""
    if len(rows) == 1:
        await tx.execute(APPEND, rows[0])
    elif rows:
        await tx.executemany(APPEND, rows)
    appended(tx, rows)


def appended(tx: Tx, rows: Sequence[dict[str, Any]]) -> None:
    """What follows an append, however it was written: the transaction knows it (it announces
    the events once committed), and the metric counts them."""
    if rows:
        tx.feed_appended()
    for row in rows:
        FEED_EVENTS_APPENDED.labels(type=row["type"]).inc()


# Reading --------------------------------------------------------------------------------------


@dataclass(slots=True)
class FeedEvent:
    id: int
    type: str
    occurred_at: datetime
    source: str
    delivery_id: int | None
    connection_pk: int
    environment: str
    integration_id: str
    end_user_id: str | None
    organization_id: str | None
    connection: dict[str, Any]


EVENT_FIELDS = tuple(item.name for item in fields(FeedEvent))


def event_json(event: FeedEvent) -> dict[str, Any]:
    """An event as consumers receive it (pull, stream and push alike)."""
    return {
        "id": event.id,
        "type": event.type,
        "occurred_at": event.occurred_at,
        "source": event.source,
        "delivery_id": event.delivery_id,
        "connection": event.connection,
    }


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a consumer wants; empty fields match everything."""

    types: tuple[str, ...] = ()
    end_user_id: str | None = None
    organization_id: str | None = None
    integration_id: str | None = None

    def params(self) -> dict[str, Any]:
        values: dict[str, Any] = {f"t{i}": kind for i, kind in enumerate(self.types)}
        for name in ("end_user_id", "organization_id", "integration_id"):
            if getattr(self, name) is not None:
                values[name] = getattr(self, name)
        return values

    def matches(self, event: FeedEvent) -> bool:
        if self.types and event.type not in self.types:
            return False
        return all(
            getattr(self, name) is None or getattr(self, name) == getattr(event, name)
            for name in ("end_user_id", "organization_id", "integration_id")
        )


@lru_cache(maxsize=128)
def _select(
    type_count: int, by_end_user: bool, by_organization: bool, by_integration: bool
) -> Statement:
    where = ["id > :after", "id <= :head"]
    if type_count:
        where.append(f"type IN ({', '.join(f':t{i}' for i in range(type_count))})")
    for name, wanted in (
        ("end_user_id", by_end_user),
        ("organization_id", by_organization),
        ("integration_id", by_integration),
    ):
        if wanted:
            where.append(f"{name} = :{name}")
    return sql(
        f"SELECT {', '.join(EVENT_FIELDS)} FROM feed_events"  # noqa: S608 (fixed names)
        f" WHERE {' AND '.join(where)} ORDER BY id LIMIT :limit"
    )


# The highest ID every reader may hand out (see the module docstring). On SQLite, the highest.
SETTLED_HEAD = sql(
    "SELECT max(id) FROM feed_events",
    postgres=f"SELECT (SELECT max(id) FROM feed_events), pg_advisory_xact_lock({ORDER_LOCK})",  # noqa: S608
)
HEAD = sql("SELECT max(id) FROM feed_events")


async def settled_head(tx: Tx) -> int:
    """The highest event ID whose predecessors have all committed (0 when the feed is empty)."""
    row = await tx.fetchone(SETTLED_HEAD)
    return 0 if row is None or row[0] is None else int(row[0])


async def feed_head(database: Database) -> int:
    """The highest event ID committed (0 when empty): where a new consumer may start."""
    async with database.reader() as tx:
        row = await tx.fetchone(HEAD)
    return 0 if row is None or row[0] is None else int(row[0])


async def read_events(
    database: Database, *, after: int, limit: int, filters: EventFilter | None = None
) -> list[FeedEvent]:
    """Events with an ID above ``after``, oldest first, at most ``limit``.

    Safe to resume from the last ID returned: no event with a lower ID can appear later.
    """
    filters = filters or EventFilter()
    statement = _select(
        len(filters.types),
        filters.end_user_id is not None,
        filters.organization_id is not None,
        filters.integration_id is not None,
    )
    async with database.reader() as tx:
        head = await settled_head(tx)
        if head <= after:
            return []
        rows = await tx.fetchall(
            statement, {"after": after, "head": head, "limit": limit, **filters.params()}
        )
    return [FeedEvent(*row) for row in rows]
