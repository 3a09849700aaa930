"""Reading the inbox: stored deliveries, for operators (``nango-registry deliveries``) and the
console. Writes stay in ``app.webhooks.inbox``.

Listings page by keyset on the delivery ID (newest first by default, or in arrival order), so a
delivery stored while someone pages neither repeats nor shifts the rows not read yet. Each
combination of filters is its own statement, rendered once and kept: a catch-all
``(:x IS NULL OR column = :x)`` would give Postgres one generic plan that ignores the indexes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

from app.db.database import Database, Row, Statement, sql
from app.webhooks.model import DeliveryOutcome

COUNT_FAILED = sql("SELECT count(*) FROM deliveries WHERE outcome = 'failed'")

MAX_LIMIT = 500
Order = Literal["newest", "oldest"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stored delivery, without its body (what a listing shows)."""

    id: int
    received_at: datetime
    webhook_type: str | None
    operation: str | None
    success: bool | None
    environment: str | None
    integration_id: str | None
    connection_id: str | None
    outcome: str  # a DeliveryOutcome
    error: str | None
    processed_at: datetime | None
    attempts: int

    @classmethod
    def from_row(cls, row: Row) -> Delivery:
        return cls(*row[: len(COLUMNS)])


@dataclass(frozen=True, slots=True)
class DeliveryDetail(Delivery):
    """One delivery with the raw body as received and the headers kept (never a signature)."""

    body: str
    headers: dict[str, str]

    @classmethod
    def from_row(cls, row: Row) -> DeliveryDetail:
        return cls(*row)


# The columns read, in the order of the fields (the inbox writes every one but ``id``).
COLUMNS = tuple(item.name for item in fields(Delivery))
DETAIL_COLUMNS = tuple(item.name for item in fields(DeliveryDetail))

GET_DELIVERY = sql(
    f"SELECT {', '.join(DETAIL_COLUMNS)} FROM deliveries WHERE id = :id"  # noqa: S608 (fixed)
)


# What each filter adds to the WHERE clause; its parameter has the filter's name.
_CONDITIONS = {
    "outcome": "outcome = :outcome",
    "webhook_type": "webhook_type = :webhook_type",
    "connection_id": "connection_id = :connection_id",
    "integration_id": "integration_id = :integration_id",
    "environment": "environment = :environment",
    "received_from": "received_at >= :received_from",
    "received_before": "received_at < :received_before",
}


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    """Every field given must match; ``received_from`` is inclusive, ``received_before`` not."""

    outcome: DeliveryOutcome | str | None = None
    webhook_type: str | None = None
    connection_id: str | None = None
    integration_id: str | None = None
    environment: str | None = None
    received_from: datetime | None = None
    received_before: datetime | None = None

    def params(self) -> dict[str, Any]:
        """The filters that are set, by name."""
        values = {name: getattr(self, name) for name in _CONDITIONS}
        if self.outcome is not None:
            values["outcome"] = str(self.outcome)
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    deliveries: list[Delivery]
    # Pass back as ``after`` (same filters and order) for the next page; None on the last one.
    next_cursor: int | None


_LISTS: dict[tuple[frozenset[str], Order], Statement] = {}


def _list_statement(names: frozenset[str], order: Order) -> Statement:
    key = (names, order)
    if key not in _LISTS:
        conditions = [_CONDITIONS[name] for name in sorted(names)]
        conditions.append("id < :after" if order == "newest" else "id > :after")
        direction = "DESC" if order == "newest" else "ASC"
        _LISTS[key] = sql(
            f"SELECT {', '.join(COLUMNS)} FROM deliveries"  # noqa: S608 (fixed names)
            f" WHERE {' AND '.join(conditions)} ORDER BY id {direction} LIMIT :limit"
        )
    return _LISTS[key]


async def list_deliveries(
    database: Database,
    *,
    filters: DeliveryFilter | None = None,
    limit: int = 50,
    after: int | None = None,
    order: Order = "newest",
) -> DeliveryPage:
    """One page of deliveries matching ``filters``; ``after`` is the previous page's cursor."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    params = (filters or DeliveryFilter()).params()
    statement = _list_statement(frozenset(params), order)
    if after is None:
        after = 2**63 - 1 if order == "newest" else 0
    params.update(after=after, limit=limit + 1)
    async with database.reader() as tx:
        rows = await tx.fetchall(statement, params)
    deliveries = [Delivery.from_row(row) for row in rows[:limit]]
    more = len(rows) > limit
    return DeliveryPage(deliveries, deliveries[-1].id if more else None)


async def get_delivery(database: Database, *, delivery_id: int) -> DeliveryDetail | None:
    async with database.reader() as tx:
        row = await tx.fetchone(GET_DELIVERY, {"id": delivery_id})
    return None if row is None else DeliveryDetail.from_row(row)


async def count_failed(database: Database) -> int:
    """Deliveries waiting for ``nango-registry replay``."""
    async with database.reader() as tx:
        row = await tx.fetchone(COUNT_FAILED)
    assert row is not None
    return int(row[0])
