"""Finding connections: the lookup API's reads. Keyword-only, one transaction passed in.

Listings are newest registered first and paginate by keyset on the primary key (``id < after``),
never by offset: a connection inserted while a client pages through cannot shift the pages, so
no pre-existing row is repeated or skipped. Every filter is an equality on an indexed column, or
a semi-join on ``connection_tags (key, value, connection_pk)``, so lookups stay index-driven on
SQLite and Postgres alike (``tests/api/test_query_plans.py`` reads the plans).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, Generic, TypedDict, TypeVar, Unpack

from app.connections.model import COLUMNS, LIVE_STATUSES, Connection, ConnectionStatus
from app.db.database import Row, Statement, Transaction, sql
from app.db.types import unstorable
from app.errors import AMBIGUOUS_CONNECTION_ID, CONNECTION_NOT_FOUND, Conflict, NotFound

# What a listing shows unless `status` asks otherwise: deleted connections are history.
LISTED_BY_DEFAULT = LIVE_STATUSES
ALL_STATUSES = frozenset(status.value for status in ConnectionStatus)
# Far more than one person has; it bounds the work one summary request can cause.
SUMMARY_MAX_CONNECTIONS = 2000
# A 409 lists the candidates, and a handful is enough to choose from.
MAX_CANDIDATES = 20

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    # The id to continue after, or None on the last page.
    next_after_id: int | None


class ConnectionFilters(TypedDict, total=False):
    """The filters of a connection listing; every one given must match."""

    end_user_id: str | None
    organization_id: str | None
    integration_id: str | None
    environment: str | None
    statuses: Sequence[str]
    tags: Mapping[str, str] | None
    attributed: bool | None


_EQUALITY_FILTERS = ("end_user_id", "organization_id", "integration_id", "environment")


@cache
def _listing(
    equalities: tuple[str, ...],
    statuses: int,
    tags: int,
    attributed: bool | None,
    after: bool,
) -> Statement:
    """The SELECT for one shape of filters, built once per shape (and prepared by Postgres)."""
    where = [f"{name} = :{name}" for name in equalities]
    if statuses:
        where.append(f"status IN ({', '.join(f':status{i}' for i in range(statuses))})")
    # IN (uncorrelated subquery), not a correlated EXISTS: SQLite would otherwise scan every
    # connection and probe the tags per row; this way both databases start from the
    # (key, value, connection_pk) index.
    where += [
        f"id IN (SELECT connection_pk FROM connection_tags WHERE key = :tag_key{i}"  # noqa: S608 (placeholders only)
        f" AND value = :tag_value{i})"
        for i in range(tags)
    ]
    # "Attributed" means someone owns it: an end user or an organization. A connection made
    # through a Connect session without tags, or a failed legacy import, has neither.
    if attributed is True:
        where.append("(end_user_id IS NOT NULL OR organization_id IS NOT NULL)")
    elif attributed is False:
        where.append("end_user_id IS NULL AND organization_id IS NULL")
    if after:
        where.append("id < :after_id")
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    return sql(f"SELECT {COLUMNS} FROM connections{condition} ORDER BY id DESC LIMIT :limit")  # noqa: S608


def connections_query(
    *, after_id: int | None = None, limit: int = 50, **filters: Unpack[ConnectionFilters]
) -> tuple[Statement, dict[str, Any]]:
    """The SELECT behind ``find_connections`` and its parameters (tests EXPLAIN it)."""
    params: dict[str, Any] = {"limit": limit + 1}
    equalities = []
    for name in _EQUALITY_FILTERS:
        value = filters.get(name)
        if value is not None:
            equalities.append(name)
            params[name] = value
    statuses = list(filters.get("statuses", LISTED_BY_DEFAULT))
    if set(statuses) == ALL_STATUSES:
        statuses = []
    for index, status in enumerate(statuses):
        params[f"status{index}"] = status
    tags = filters.get("tags") or {}
    for index, (key, value) in enumerate(tags.items()):
        params[f"tag_key{index}"] = key
        params[f"tag_value{index}"] = value
    if after_id is not None:
        params["after_id"] = after_id
    statement = _listing(
        tuple(equalities), len(statuses), len(tags), filters.get("attributed"), after_id is not None
    )
    return statement, params


async def find_connections(
    tx: Transaction,
    *,
    limit: int,
    after_id: int | None = None,
    **filters: Unpack[ConnectionFilters],
) -> Page[Connection]:
    """Connections matching every given filter, newest first; deleted ones only when asked for."""
    statement, params = connections_query(after_id=after_id, limit=limit, **filters)
    rows = [Connection(*row) for row in await tx.fetchall(statement, params)]
    return _page(rows, limit, lambda row: row.id)


@cache
def _by_connection_id(integration: bool, environment: bool) -> Statement:
    where = "connection_id = :connection_id"
    if integration:
        where += " AND integration_id = :integration_id"
    if environment:
        where += " AND environment = :environment"
    return sql(
        f"SELECT {COLUMNS} FROM connections WHERE {where}"  # noqa: S608
        f" ORDER BY id DESC LIMIT {MAX_CANDIDATES + 1}"
    )


async def find_by_connection_id(
    tx: Transaction,
    *,
    connection_id: str,
    integration_id: str | None = None,
    environment: str | None = None,
) -> list[Connection]:
    """Every connection (up to ``MAX_CANDIDATES + 1``) a connection ID names, newest first."""
    if unstorable(connection_id, integration_id, environment):
        return []
    statement = _by_connection_id(integration_id is not None, environment is not None)
    params = {
        "connection_id": connection_id,
        "integration_id": integration_id,
        "environment": environment,
    }
    return [Connection(*row) for row in await tx.fetchall(statement, params)]


BY_PK = sql(f"SELECT {COLUMNS} FROM connections WHERE id = :id")  # noqa: S608


async def connection_by_pk(tx: Transaction, *, pk: int) -> Connection | None:
    row = await tx.fetchone(BY_PK, {"id": pk})
    return None if row is None else Connection(*row)


async def load_connection(
    tx: Transaction,
    *,
    connection_id: str,
    integration_id: str | None = None,
    environment: str | None = None,
) -> Connection:
    """The one connection a connection ID names, deleted ones included.

    Nango's generated IDs are UUIDs and unique, but legacy IDs were chosen by the customer and
    are unique only per integration (and environment): such an ID can name several connections,
    which is a 409 listing them until ``integration_id`` / ``environment`` pick one.
    """
    candidates = await find_by_connection_id(
        tx, connection_id=connection_id, integration_id=integration_id, environment=environment
    )
    if not candidates:
        raise NotFound(f"no connection {connection_id!r}", code=CONNECTION_NOT_FOUND)
    if len(candidates) > 1:
        raise Conflict(
            f"connection ID {connection_id!r} names {len(candidates)} connections: "
            "add integration_id (and environment) to choose one",
            code=AMBIGUOUS_CONNECTION_ID,
            details={"candidates": [_candidate(row) for row in candidates[:MAX_CANDIDATES]]},
        )
    return candidates[0]


@dataclass(frozen=True, slots=True)
class DeliverySummary:
    id: int
    received_at: datetime
    webhook_type: str | None
    operation: str | None
    success: bool | None
    outcome: str


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One change in a connection's history, with the delivery that caused it, if any."""

    id: int
    source: str
    action: str
    success: bool | None
    from_status: str | None
    to_status: str | None
    detail: dict[str, Any]
    created_at: datetime
    delivery: DeliverySummary | None


_HISTORY = (
    "SELECT e.id, e.source, e.action, e.success, e.from_status, e.to_status, e.detail,"
    " e.created_at, d.id, d.received_at, d.webhook_type, d.operation, d.success, d.outcome"
    " FROM connection_events e LEFT JOIN deliveries d ON d.id = e.delivery_id"
    " WHERE e.connection_pk = :connection_pk{after} ORDER BY e.id DESC LIMIT :limit"
)
HISTORY = sql(_HISTORY.format(after=""))
HISTORY_AFTER = sql(_HISTORY.format(after=" AND e.id < :after_id"))


async def find_history(
    tx: Transaction,
    *,
    connection_pk: int,
    limit: int,
    after_id: int | None = None,
) -> Page[HistoryEntry]:
    """A connection's history, newest first, each entry with the delivery that caused it."""
    statement = HISTORY if after_id is None else HISTORY_AFTER
    params = {"connection_pk": connection_pk, "limit": limit + 1, "after_id": after_id}
    entries = [_history_entry(row) for row in await tx.fetchall(statement, params)]
    return _page(entries, limit, lambda entry: entry.id)


def _history_entry(row: Row) -> HistoryEntry:
    delivery = None
    if row[8] is not None:
        delivery = DeliverySummary(row[8], row[9], row[10], row[11], row[12], row[13])
    return HistoryEntry(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], delivery)


@dataclass(slots=True)
class IntegrationSummary:
    """One integration of one end user (per environment)."""

    integration_id: str
    environment: str
    # The connection a product page should use: the newest active one, else the newest broken.
    connection: Connection
    connection_count: int = 1

    @property
    def connected(self) -> bool:
        return self.connection.status == ConnectionStatus.ACTIVE

    @property
    def needs_reauthorization(self) -> bool:
        return self.connection.status == ConnectionStatus.AUTH_ERROR


_SUMMARY = (
    f"SELECT {COLUMNS} FROM connections"  # noqa: S608
    " WHERE end_user_id = :end_user_id AND status <> 'deleted'{environment}"
    f" ORDER BY id DESC LIMIT {SUMMARY_MAX_CONNECTIONS}"
)
SUMMARY = sql(_SUMMARY.format(environment=""))
SUMMARY_IN_ENVIRONMENT = sql(_SUMMARY.format(environment=" AND environment = :environment"))


async def end_user_summary(
    tx: Transaction,
    *,
    end_user_id: str,
    environment: str | None = None,
) -> list[IntegrationSummary]:
    """Per integration: is there an active connection, which one, does it need re-authorizing.

    Deleted connections are left out: an integration whose connections are all deleted is not
    connected, the same as one never connected, and is not listed.
    """
    if unstorable(end_user_id, environment):
        return []
    statement = SUMMARY if environment is None else SUMMARY_IN_ENVIRONMENT
    rows = await tx.fetchall(statement, {"end_user_id": end_user_id, "environment": environment})
    summaries: dict[tuple[str, str], IntegrationSummary] = {}
    for row in rows:
        connection = Connection(*row)
        key = (connection.environment, connection.integration_id)
        summary = summaries.get(key)
        if summary is None:
            summaries[key] = IntegrationSummary(
                integration_id=connection.integration_id,
                environment=connection.environment,
                connection=connection,
            )
            continue
        summary.connection_count += 1
        # Rows come newest first, so the first active one seen is the newest active one.
        if not summary.connected and connection.status == ConnectionStatus.ACTIVE:
            summary.connection = connection
    return sorted(summaries.values(), key=lambda item: (item.integration_id, item.environment))


def _candidate(connection: Connection) -> dict[str, str]:
    return {
        "connection_id": connection.connection_id,
        "integration_id": connection.integration_id,
        "environment": connection.environment,
        "status": connection.status,
    }


def _page(rows: list[T], limit: int, row_id: Callable[[T], int]) -> Page[T]:
    if len(rows) > limit:
        rows = rows[:limit]
        return Page(items=rows, next_after_id=int(row_id(rows[-1])))
    return Page(items=rows, next_after_id=None)
