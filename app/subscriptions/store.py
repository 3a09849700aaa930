"""Every read and write of subscriptions, their outbox rows and their attempts.

The outbox is filled by the database itself: a trigger on ``feed_events`` (migration 0006)
inserts one delivery per matching subscription in the transaction that appends the event, so a
delivery is due exactly when its event commits, and never without it, whichever code path
appended it. ``replay`` queues events again from a point with the same matching rules
(``_MATCH`` here, the trigger's WHERE there; a test holds them together).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.db.database import Database, sql
from app.db.types import utcnow
from app.subscriptions import signing
from app.subscriptions.model import (
    ATTEMPT_COLUMNS,
    SUBSCRIPTION_COLUMNS,
    Attempt,
    Outcome,
    Subscription,
    SubscriptionStatus,
)

FILTER_FIELDS = ("end_user_id", "organization_id", "integration_id")

# JSON arrays travel as text: Postgres casts it, SQLite's JSON column parses it when read.
INSERT = sql(
    "INSERT INTO subscriptions (url, event_types, end_user_id, organization_id, integration_id,"
    " status, secret_salt, secret_check, created_at, updated_at)"
    " VALUES (:url, :event_types, :end_user_id, :organization_id, :integration_id, 'active',"
    " :salt, '', :now, :now) RETURNING id",
    postgres="INSERT INTO subscriptions (url, event_types, end_user_id, organization_id,"
    " integration_id, status, secret_salt, secret_check, created_at, updated_at)"
    " VALUES (:url, CAST(:event_types AS jsonb), :end_user_id, :organization_id,"
    " :integration_id, 'active', :salt, '', :now, :now) RETURNING id",
)
SET_CHECK = sql("UPDATE subscriptions SET secret_check = :check WHERE id = :id")
ONE = sql(f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = :id")  # noqa: S608
LOCK = sql(f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = :id", lock=True)  # noqa: S608
ALL = sql(f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions ORDER BY id")  # noqa: S608
_SAVE_SET = (
    " SET url = :url, event_types = {types}, end_user_id = :end_user_id,"
    " organization_id = :organization_id, integration_id = :integration_id, status = :status,"
    " failing_since = :failing_since, disabled_at = :disabled_at, updated_at = :now"
    " WHERE id = :id"
)
SAVE = sql(
    "UPDATE subscriptions" + _SAVE_SET.format(types=":event_types"),
    postgres="UPDATE subscriptions" + _SAVE_SET.format(types="CAST(:event_types AS jsonb)"),
)
DELETE = sql(f"DELETE FROM subscriptions WHERE id = :id RETURNING {SUBSCRIPTION_COLUMNS}")  # noqa: S608

# Which events a subscription is sent: every filter it sets must match the event.
_REPLAY = (
    "INSERT INTO subscription_deliveries (subscription_id, event_id, connection_pk, status,"
    " tries, next_attempt_at, created_at) SELECT s.id, e.id, e.connection_pk, 'pending', 0,"
    " :now, :now FROM feed_events e JOIN subscriptions s"
    " ON (s.end_user_id IS NULL OR s.end_user_id = e.end_user_id)"
    " AND (s.organization_id IS NULL OR s.organization_id = e.organization_id)"
    " AND (s.integration_id IS NULL OR s.integration_id = e.integration_id)"
    " AND (s.event_types IS NULL OR {has_type})"
    " WHERE s.id = :subscription_id AND e.id > :after ORDER BY e.id LIMIT :limit"
    " RETURNING event_id"
)
REPLAY = sql(
    _REPLAY.format(
        has_type="EXISTS (SELECT 1 FROM json_each(s.event_types) t WHERE t.value = e.type)"
    ),
    postgres=_REPLAY.format(has_type="s.event_types ? e.type"),
)

ATTEMPTS = sql(
    f"SELECT {ATTEMPT_COLUMNS} FROM subscription_attempts"  # noqa: S608
    " WHERE subscription_id = :subscription_id AND id < :before ORDER BY id DESC LIMIT :limit"
)


def _types_text(event_types: Sequence[str] | None) -> str | None:
    return None if event_types is None else json.dumps(list(event_types))


def subscription_from_row(row: tuple[Any, ...]) -> Subscription:
    values = list(row)
    values[6] = SubscriptionStatus(values[6])
    return Subscription(*values)


@dataclass(frozen=True, slots=True)
class Created:
    subscription: Subscription
    secret: str


async def create_subscription(
    database: Database,
    *,
    secret_key: str,
    url: str,
    event_types: Sequence[str] | None,
    filters: Mapping[str, str | None],
) -> Created:
    """Store a subscription; its secret is returned here and can never be read back."""
    now = utcnow()
    salt = signing.new_salt()
    async with database.transaction() as tx:
        row = await tx.fetchone(
            INSERT,
            {
                "url": url,
                "event_types": _types_text(event_types),
                **{name: filters.get(name) for name in FILTER_FIELDS},
                "salt": salt,
                "now": now,
            },
        )
        assert row is not None
        secret = signing.derive_secret(secret_key, subscription_id=row[0], salt=salt)
        await tx.execute(SET_CHECK, {"id": row[0], "check": signing.secret_check(secret)})
        stored = await tx.fetchone(ONE, {"id": row[0]})
    assert stored is not None
    return Created(subscription_from_row(stored), secret)


async def list_subscriptions(database: Database) -> list[Subscription]:
    async with database.reader() as tx:
        return [subscription_from_row(row) for row in await tx.fetchall(ALL)]


async def get_subscription(database: Database, subscription_id: int) -> Subscription | None:
    async with database.reader() as tx:
        row = await tx.fetchone(ONE, {"id": subscription_id})
    return None if row is None else subscription_from_row(row)


def _changed(current: Subscription, changes: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": current.id,
        "url": current.url,
        "event_types": current.event_types,
        "end_user_id": current.end_user_id,
        "organization_id": current.organization_id,
        "integration_id": current.integration_id,
        "status": current.status,
        "failing_since": current.failing_since,
        "disabled_at": current.disabled_at,
    }
    values.update(changes)
    if values["status"] != SubscriptionStatus.DISABLED:
        # Resumed (or paused) by someone: its failures so far no longer count towards disabling.
        values["disabled_at"] = None
        if current.status == SubscriptionStatus.DISABLED:
            values["failing_since"] = None
    values["event_types"] = _types_text(values["event_types"])
    return values


async def update_subscription(
    database: Database, subscription_id: int, changes: Mapping[str, Any]
) -> Subscription | None:
    """Apply ``changes`` (url, event_types, status, the filter fields); None if it is gone."""
    async with database.transaction() as tx:
        row = await tx.fetchone(LOCK, {"id": subscription_id})
        if row is None:
            return None
        values = _changed(subscription_from_row(row), changes)
        await tx.execute(SAVE, {**values, "now": utcnow()})
        saved = await tx.fetchone(ONE, {"id": subscription_id})
    assert saved is not None
    return subscription_from_row(saved)


async def delete_subscription(database: Database, subscription_id: int) -> Subscription | None:
    """Delete it with its queue and attempts; return what it was (None: there was none)."""
    async with database.transaction() as tx:
        row = await tx.fetchone(DELETE, {"id": subscription_id})
    return None if row is None else subscription_from_row(row)


@dataclass(frozen=True, slots=True)
class Replayed:
    queued: int
    last_event_id: int | None


async def replay(
    database: Database, *, subscription_id: int, after: int, limit: int
) -> Replayed | None:
    """Queue again up to ``limit`` of the subscription's events after ``after``, oldest first.

    They are new deliveries behind whatever is queued already, with the same ``webhook-id`` as
    the first time (a consumer that keeps them can tell a repeat).
    """
    async with database.transaction() as tx:
        if await tx.fetchone(LOCK, {"id": subscription_id}) is None:
            return None
        rows = await tx.fetchall(
            REPLAY,
            {"subscription_id": subscription_id, "after": after, "limit": limit, "now": utcnow()},
        )
    return Replayed(len(rows), max((row[0] for row in rows), default=None))


def attempt_from_row(row: tuple[Any, ...]) -> Attempt:
    values = list(row)
    values[5] = Outcome(values[5])
    return Attempt(*values)


async def list_attempts(
    database: Database, *, subscription_id: int, before: int | None, limit: int
) -> list[Attempt]:
    """Attempts, newest first, with ids below ``before``."""
    async with database.reader() as tx:
        rows = await tx.fetchall(
            ATTEMPTS,
            {
                "subscription_id": subscription_id,
                "before": before if before is not None else 2**62,
                "limit": limit,
            },
        )
    return [attempt_from_row(row) for row in rows]
