"""Column types that behave the same on SQLite and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB


def utcnow() -> datetime:
    return datetime.now(UTC)


def unstorable(*values: str | None) -> bool:
    """True if a value holds a NUL. Postgres text cannot, so no stored row matches it, and a
    lookup by it finds nothing without asking: Postgres would refuse the query (a 400) where
    SQLite finds nothing (a 404), and a lookup must answer the same on both."""
    return any(value is not None and "\x00" in value for value in values)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes in and out; SQLite otherwise returns naive values."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONDocument: Any = JSON().with_variant(JSONB(), "postgresql")
# A JSON column that may be unknown: Python None is SQL NULL (not the JSON ``null`` SQLAlchemy
# writes by default), so ``IS NULL`` finds what was never fetched.
NullableJSONDocument: Any = JSON(none_as_null=True).with_variant(
    JSONB(none_as_null=True), "postgresql"
)
