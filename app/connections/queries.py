"""Finding connections: the lookup API's reads. Keyword-only, one session passed in.

Listings are newest registered first and paginate by keyset on the primary key (``id < after``),
never by offset: a connection inserted while a client pages through cannot shift the pages, so
no pre-existing row is repeated or skipped. Every filter is an equality on an indexed column, or
a semi-join on ``connection_tags (key, value, connection_pk)``, so lookups stay index-driven on
SQLite and Postgres alike (``tests/api/test_query_plans.py`` reads the plans).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar, Unpack

from sqlalchemy import and_, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select

from app.db.models import Connection, ConnectionEvent, ConnectionStatus, ConnectionTag, Delivery
from app.errors import Conflict, NotFound

# What a listing shows unless `status` asks otherwise: deleted connections are history.
LISTED_BY_DEFAULT = (ConnectionStatus.ACTIVE.value, ConnectionStatus.AUTH_ERROR.value)
# Far more than one person has; it bounds the work one summary request can cause.
SUMMARY_MAX_CONNECTIONS = 2000


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


def connections_query(
    *, after_id: int | None = None, limit: int = 50, **filters: Unpack[ConnectionFilters]
) -> Any:
    """The SELECT behind ``find_connections`` (exposed so tests can EXPLAIN it)."""
    end_user_id = filters.get("end_user_id")
    organization_id = filters.get("organization_id")
    integration_id = filters.get("integration_id")
    environment = filters.get("environment")
    statuses = filters.get("statuses", LISTED_BY_DEFAULT)
    tags = filters.get("tags")
    attributed = filters.get("attributed")
    query = select(Connection)
    if end_user_id is not None:
        query = query.where(col(Connection.end_user_id) == end_user_id)
    if organization_id is not None:
        query = query.where(col(Connection.organization_id) == organization_id)
    if integration_id is not None:
        query = query.where(col(Connection.integration_id) == integration_id)
    if environment is not None:
        query = query.where(col(Connection.environment) == environment)
    if set(statuses) != {status.value for status in ConnectionStatus}:
        query = query.where(col(Connection.status).in_(list(statuses)))
    for key, value in (tags or {}).items():
        # IN (uncorrelated subquery), not a correlated EXISTS: SQLite would otherwise scan every
        # connection and probe the tags per row; this way both databases start from the
        # (key, value, connection_pk) index.
        query = query.where(
            col(Connection.id).in_(
                select(col(ConnectionTag.connection_pk)).where(
                    col(ConnectionTag.key) == key, col(ConnectionTag.value) == value
                )
            )
        )
    # "Attributed" means someone owns it: an end user or an organization. A connection made
    # through a Connect session without tags, or a failed legacy import, has neither.
    if attributed is True:
        query = query.where(
            or_(
                col(Connection.end_user_id).is_not(None),
                col(Connection.organization_id).is_not(None),
            )
        )
    elif attributed is False:
        query = query.where(
            and_(col(Connection.end_user_id).is_(None), col(Connection.organization_id).is_(None))
        )
    if after_id is not None:
        query = query.where(col(Connection.id) < after_id)
    return query.order_by(col(Connection.id).desc()).limit(limit + 1)


async def find_connections(
    session: AsyncSession,
    *,
    limit: int,
    after_id: int | None = None,
    **filters: Unpack[ConnectionFilters],
) -> Page[Connection]:
    """Connections matching every given filter, newest first; deleted ones only when asked for."""
    query = connections_query(after_id=after_id, limit=limit, **filters)
    rows = list((await session.execute(query)).scalars().all())
    return _page(rows, limit, lambda row: row.id)


async def get_connection(
    session: AsyncSession,
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
    query = select(Connection).where(col(Connection.connection_id) == connection_id)
    if integration_id is not None:
        query = query.where(col(Connection.integration_id) == integration_id)
    if environment is not None:
        query = query.where(col(Connection.environment) == environment)
    # Bounded: a 409 lists the candidates, and a handful is enough to choose from.
    query = query.order_by(col(Connection.id).desc()).limit(21)
    candidates = list((await session.execute(query)).scalars().all())
    if not candidates:
        raise NotFound(f"no connection {connection_id!r}", code="connection_not_found")
    if len(candidates) > 1:
        raise Conflict(
            f"connection ID {connection_id!r} names {len(candidates)} connections: "
            "add integration_id (and environment) to choose one",
            code="ambiguous_connection_id",
            details={"candidates": [_candidate(row) for row in candidates[:20]]},
        )
    return candidates[0]


async def find_connection_events(
    session: AsyncSession,
    *,
    connection_pk: int,
    limit: int,
    after_id: int | None = None,
) -> Page[tuple[ConnectionEvent, Delivery | None]]:
    """A connection's history, newest first, each event with the delivery that caused it."""
    query = (
        select(ConnectionEvent, Delivery)
        .join(Delivery, col(Delivery.id) == col(ConnectionEvent.delivery_id), isouter=True)
        .where(col(ConnectionEvent.connection_pk) == connection_pk)
    )
    if after_id is not None:
        query = query.where(col(ConnectionEvent.id) < after_id)
    query = query.order_by(col(ConnectionEvent.id).desc()).limit(limit + 1)
    rows: list[tuple[ConnectionEvent, Delivery | None]] = [
        (row[0], row[1]) for row in (await session.execute(query)).all()
    ]
    return _page(rows, limit, lambda row: row[0].id)


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


async def end_user_summary(
    session: AsyncSession,
    *,
    end_user_id: str,
    environment: str | None = None,
) -> list[IntegrationSummary]:
    """Per integration: is there an active connection, which one, does it need re-authorizing.

    Deleted connections are left out: an integration whose connections are all deleted is not
    connected, the same as one never connected, and is not listed.
    """
    query = select(Connection).where(
        col(Connection.end_user_id) == end_user_id,
        col(Connection.status) != ConnectionStatus.DELETED,
    )
    if environment is not None:
        query = query.where(col(Connection.environment) == environment)
    query = query.order_by(col(Connection.id).desc()).limit(SUMMARY_MAX_CONNECTIONS)
    summaries: dict[tuple[str, str], IntegrationSummary] = {}
    for connection in (await session.execute(query)).scalars():
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


def _page(rows: list[T], limit: int, row_id: Any) -> Page[T]:
    if len(rows) > limit:
        rows = rows[:limit]
        return Page(items=rows, next_after_id=int(row_id(rows[-1])))
    return Page(items=rows, next_after_id=None)
