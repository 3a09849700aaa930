"""Reconciliation: make the registry agree with Nango's connections API.

Webhooks get lost (FACTS.md section 3), deletions are opt-in and never sent for bulk deletes, and
connections older than this service were never announced. A run pages through every connection
Nango has, creates the missing ones (attributed from their tags or end user), updates statuses
from ``errors`` and merges attribution; only after a complete listing does it mark as deleted the
local connections Nango no longer has.

Safe while webhooks arrive: pages are applied in short transactions (no lock is held while Nango
is asked for the next page), a row changed after the listing started may be newer than what the
listing says and keeps its status, and a tombstone written after the listing started
is never revived. Nango pages by offset, so a deletion at Nango during the listing can shift a
connection past a page boundary: every deletion candidate is confirmed with a filtered listing
before it is marked deleted.
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col, select

from app.connections.store import (
    ATTRIBUTION_FIELDS,
    Attribution,
    change_status,
    clean_text,
    insert_connections,
    lock_connection,
    merge_attribution,
    new_connection_row,
    record_event,
    record_events,
)
from app.db.engine import unit_of_work
from app.db.leases import acquire_lease, release_lease
from app.db.models import Connection, ConnectionStatus, ReconcileRun
from app.db.types import utcnow
from app.logs import get_logger
from app.metrics import RECONCILE_RUNS
from app.nango.client import NangoClient, NangoUnavailable

log = get_logger(__name__)

LEASE_NAME = "reconcile"
# Renewed after every page, so it only has to outlast one page and one chunk of writes.
LEASE_TTL = timedelta(minutes=5)
PAGE_SIZE = 1000
# Rows written per transaction: short enough that a webhook waiting on SQLite's write lock (or on
# a Postgres row lock) waits milliseconds, not the length of a page.
CHUNK_SIZE = 100
LIVE = (ConnectionStatus.ACTIVE, ConnectionStatus.AUTH_ERROR)


class ReconcileBusy(Exception):
    """Another process holds the reconcile lease."""


@dataclass
class ReconcileCounts:
    seen: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unattributed: int = 0  # connections Nango has that nobody here owns (a state, not a change)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def new_holder() -> str:
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def reconcile(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    nango: NangoClient,
    environment: str,
    trigger: str,
    page_size: int | None = None,
    holder: str | None = None,
    skip_if_succeeded_within: timedelta | None = None,
) -> ReconcileCounts | None:
    """Run one reconciliation under the lease; raise ReconcileBusy if another one is running.

    With ``skip_if_succeeded_within`` (the scheduler), returns None without running when a run
    finished successfully that recently: checked under the lease, so instances do not repeat it.
    """
    holder = holder or new_holder()
    async with unit_of_work(sessionmaker) as session:
        if not await acquire_lease(session, name=LEASE_NAME, holder=holder, ttl=LEASE_TTL):
            raise ReconcileBusy("a reconciliation is already running")
    try:
        if skip_if_succeeded_within is not None and await _succeeded_since(
            sessionmaker, utcnow() - skip_if_succeeded_within
        ):
            return None
        async with unit_of_work(sessionmaker) as session:
            run = ReconcileRun(trigger=trigger)
            session.add(run)
        try:
            counts = await _reconcile(
                sessionmaker=sessionmaker,
                nango=nango,
                environment=environment,
                page_size=page_size or PAGE_SIZE,
                holder=holder,
            )
        except BaseException as error:
            await _finish(sessionmaker, run, status="failed", error=type(error).__name__)
            RECONCILE_RUNS.labels(trigger=trigger, status="failed").inc()
            log.warning("reconcile_failed", trigger=trigger, error=str(error)[:300])
            raise
        await _finish(sessionmaker, run, status="succeeded", counts=counts.as_dict())
        RECONCILE_RUNS.labels(trigger=trigger, status="succeeded").inc()
        log.info("reconciled", trigger=trigger, environment=environment, **counts.as_dict())
        return counts
    finally:
        with anyio.CancelScope(shield=True):
            async with unit_of_work(sessionmaker) as session:
                await release_lease(session, name=LEASE_NAME, holder=holder)


async def _succeeded_since(sessionmaker: async_sessionmaker[AsyncSession], since: datetime) -> bool:
    async with sessionmaker() as session:
        found = await session.execute(
            select(col(ReconcileRun.id))
            .where(col(ReconcileRun.status) == "succeeded", col(ReconcileRun.finished_at) > since)
            .limit(1)
        )
        return found.first() is not None


async def _finish(
    sessionmaker: async_sessionmaker[AsyncSession],
    run: ReconcileRun,
    *,
    status: str,
    counts: dict[str, int] | None = None,
    error: str | None = None,
) -> None:
    with anyio.CancelScope(shield=True):
        async with unit_of_work(sessionmaker) as session:
            stored = await session.get(ReconcileRun, run.id)
            assert stored is not None
            stored.status = status
            stored.finished_at = utcnow()
            stored.counts = counts or {}
            stored.error = error


async def _reconcile(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    nango: NangoClient,
    environment: str,
    page_size: int,
    holder: str,
) -> ReconcileCounts:
    counts = ReconcileCounts()
    started = utcnow()
    seen: set[tuple[str, str]] = set()
    page = 0
    while True:
        items = await nango.list_connections(page=page, limit=page_size)
        new = 0
        for offset in range(0, len(items), CHUNK_SIZE):
            chunk: list[tuple[tuple[str, str], dict[str, Any]]] = []
            for item in items[offset : offset + CHUNK_SIZE]:
                key = _key(item)
                if key is None or key in seen:
                    continue  # offset paging repeats a row when Nango gains one meanwhile
                seen.add(key)
                chunk.append((key, item))
            new += len(chunk)
            if not chunk:
                continue
            async with unit_of_work(sessionmaker) as session:
                known = await _load_known(
                    session, environment=environment, keys=[k for k, _ in chunk]
                )
                created = await _create_unknown(
                    session,
                    items=[(key, item) for key, item in chunk if key not in known],
                    environment=environment,
                    counts=counts,
                )
                for key, item in chunk:
                    if key in created:
                        continue
                    stored = known.get(key)
                    if stored is not None and _already_agrees(stored, item):
                        # Most rows agree with Nango already: a second run writes nothing.
                        counts.unattributed += stored.end_user_id is None and (
                            stored.organization_id is None
                        )
                        continue
                    await _apply_listed(
                        session,
                        item=item,
                        key=key,
                        environment=environment,
                        started=started,
                        counts=counts,
                    )
        async with unit_of_work(sessionmaker) as session:
            if not await acquire_lease(session, name=LEASE_NAME, holder=holder, ttl=LEASE_TTL):
                raise ReconcileBusy("lost the reconcile lease during the listing")
        if len(items) < page_size:
            break
        if new == 0:
            # A full page of rows already seen: the server is not advancing the offset.
            raise NangoUnavailable(f"Nango's listing did not advance at page {page}")
        page += 1
    counts.seen = len(seen)
    counts.deleted = await _delete_missing(
        sessionmaker=sessionmaker,
        nango=nango,
        environment=environment,
        started=started,
        seen=seen,
    )
    return counts


async def _load_known(
    session: AsyncSession, *, environment: str, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], Connection]:
    """The stored connections among ``keys``, locked, in one query.

    Filtered on ``connection_id`` alone, so Postgres uses its own index: with the environment
    too it may pick the unique index, whose leading column matches every row (seen on a table
    not analyzed yet, i.e. the first reconcile of a new install: 100x slower).
    """
    query = (
        select(Connection)
        .where(col(Connection.connection_id).in_({connection_id for _, connection_id in keys}))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    wanted = set(keys)
    found = {}
    for connection in (await session.execute(query)).scalars():
        key = (connection.integration_id, connection.connection_id)
        if key in wanted and connection.environment == environment:
            found[key] = connection
    return found


async def _create_unknown(
    session: AsyncSession,
    *,
    items: list[tuple[tuple[str, str], dict[str, Any]]],
    environment: str,
    counts: ReconcileCounts,
) -> set[tuple[str, str]]:
    """Create the listed connections not stored yet, a chunk in a few statements.

    Returns the keys created; a key a webhook created meanwhile is left to ``_apply_listed``.
    """
    if not items:
        return set()
    now = utcnow()
    rows = []
    errors_by_key: dict[tuple[str, str], list[dict[str, str]]] = {}
    for key, item in items:
        error_type, errors = _first_error(item)
        errors_by_key[key] = errors
        row = new_connection_row(
            environment=environment,
            integration_id=key[0],
            connection_id=key[1],
            provider=clean_text(item.get("provider")),
            auth_mode=None,
            status=ConnectionStatus.AUTH_ERROR if error_type else ConnectionStatus.ACTIVE,
            attribution=Attribution.from_nango(
                tags=item.get("tags"), end_user=_flat_end_user(item.get("end_user"))
            ),
            now=now,
        )
        row["error_type"] = error_type
        row["error_since"] = now if error_type else None
        rows.append(row)
    inserted = await insert_connections(session, rows=rows)
    events = []
    for connection in inserted:
        errors = errors_by_key[(connection.integration_id, connection.connection_id)]
        events.append(
            {
                "connection_pk": connection.id,
                "delivery_id": None,
                "source": "reconcile",
                "action": "creation",
                "success": None,
                "from_status": None,
                "to_status": connection.status,
                "detail": {"nango_errors": errors} if errors else {},
                "created_at": now,
            }
        )
        counts.unattributed += connection.end_user_id is None and connection.organization_id is None
    if events:
        await record_events(session, rows=events)
    counts.created += len(inserted)
    return {(connection.integration_id, connection.connection_id) for connection in inserted}


def _already_agrees(connection: Connection, item: dict[str, Any]) -> bool:
    """True when applying the listed ``item`` would change nothing on ``connection``."""
    if connection.status == ConnectionStatus.DELETED:
        return False
    error_type, _ = _first_error(item)
    if error_type:
        if connection.status != ConnectionStatus.AUTH_ERROR or connection.error_type != error_type:
            return False
    elif connection.status != ConnectionStatus.ACTIVE:
        return False
    attribution = Attribution.from_nango(
        tags=item.get("tags"), end_user=_flat_end_user(item.get("end_user"))
    )
    for name in ATTRIBUTION_FIELDS:
        value = getattr(attribution, name)
        if value is not None and getattr(connection, name) != value:
            return False
    stored = connection.tags or {}
    return all(stored.get(key) == value for key, value in attribution.tags.items())


def _key(item: dict[str, Any]) -> tuple[str, str] | None:
    integration_id = clean_text(item.get("provider_config_key"))
    connection_id = clean_text(item.get("connection_id"))
    if integration_id is None or connection_id is None:
        return None
    return integration_id, connection_id


def _first_error(item: dict[str, Any]) -> tuple[str | None, list[dict[str, str]]]:
    errors = item.get("errors")
    if not isinstance(errors, list) or not errors:
        return None, []
    kept = [
        {k: str(v)[:255] for k, v in error.items() if k in ("type", "log_id")}
        for error in errors[:5]
        if isinstance(error, dict)
    ]
    first = kept[0].get("type") if kept else None
    return (first or "unknown_error"), kept


def _flat_end_user(end_user: object) -> object:
    """The listing nests ``organization {id, display_name}`` in ``end_user``; webhooks do not."""
    if not isinstance(end_user, Mapping):
        return end_user
    organization = end_user.get("organization")
    if isinstance(organization, Mapping) and "organization_id" not in end_user:
        return {**end_user, "organization_id": organization.get("id")}
    return end_user


async def _apply_listed(
    session: AsyncSession,
    *,
    item: dict[str, Any],
    key: tuple[str, str],
    environment: str,
    started: datetime,
    counts: ReconcileCounts,
) -> None:
    now = utcnow()
    error_type, errors = _first_error(item)
    target = ConnectionStatus.AUTH_ERROR if error_type else ConnectionStatus.ACTIVE
    attribution = Attribution.from_nango(
        tags=item.get("tags"), end_user=_flat_end_user(item.get("end_user"))
    )
    connection, created = await lock_connection(
        session,
        environment=environment,
        integration_id=key[0],
        connection_id=key[1],
        provider=clean_text(item.get("provider")),
        status=target,
        attribution=attribution,
        now=now,
    )
    detail: dict[str, Any] = {"nango_errors": errors} if errors else {}
    if created:
        if error_type:
            connection.error_type = error_type
            connection.error_since = now
        await record_event(
            session,
            connection=connection,
            source="reconcile",
            action="creation",
            to_status=target,
            detail=detail,
            now=now,
        )
        counts.created += 1
    else:
        changed = False
        if connection.status == ConnectionStatus.DELETED:
            # A tombstone newer than the listing may be a deletion the listing has not seen.
            if connection.deleted_at is None or connection.deleted_at < started:
                await change_status(
                    session,
                    connection=connection,
                    status=target,
                    source="reconcile",
                    action="restore",
                    error_type=error_type,
                    detail=detail,
                    now=now,
                )
                connection.deleted_at = None
                changed = True
        elif connection.updated_at < started and (
            connection.status != target
            or (target == ConnectionStatus.AUTH_ERROR and connection.error_type != error_type)
        ):
            # A row changed since the listing started may carry newer news (a webhook) than the
            # page; the next run settles it.
            await change_status(
                session,
                connection=connection,
                status=target,
                source="reconcile",
                action="status",
                error_type=error_type,
                detail=detail,
                now=now,
            )
            changed = True
        if await merge_attribution(session, connection=connection, attribution=attribution):
            connection.updated_at = now
            await record_event(session, connection=connection, source="reconcile", action="tags")
            changed = True
        counts.updated += changed
    if connection.end_user_id is None and connection.organization_id is None:
        counts.unattributed += 1


async def _delete_missing(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    nango: NangoClient,
    environment: str,
    started: datetime,
    seen: set[tuple[str, str]],
) -> int:
    async with sessionmaker() as session:
        rows = (
            await session.execute(
                select(
                    col(Connection.id),
                    col(Connection.integration_id),
                    col(Connection.connection_id),
                ).where(
                    col(Connection.environment) == environment,
                    col(Connection.status).in_(LIVE),
                    col(Connection.updated_at) < started,
                )
            )
        ).all()
    missing = [row for row in rows if (row.integration_id, row.connection_id) not in seen]
    if missing and not seen:
        # An empty listing against a populated registry is more likely a secret key of another
        # environment than every user disconnecting at once; refuse to tombstone everything.
        log.warning("reconcile_empty_listing", environment=environment, withheld=len(missing))
        return 0
    deleted = 0
    for row in missing:
        found = await nango.list_connections(
            page=0, limit=100, search=row.connection_id, integration_ids=[row.integration_id]
        )
        if any(_key(item) == (row.integration_id, row.connection_id) for item in found):
            continue
        async with unit_of_work(sessionmaker) as session:
            connection = (
                await session.execute(
                    select(Connection)
                    .where(col(Connection.id) == row.id)
                    .with_for_update()
                    .execution_options(populate_existing=True)
                )
            ).scalar_one_or_none()
            if (
                connection is None
                or connection.status not in LIVE
                or connection.updated_at >= started
            ):
                continue  # a webhook got there first
            await change_status(
                session,
                connection=connection,
                status=ConnectionStatus.DELETED,
                source="reconcile",
                action="deletion",
                detail={"reason": "absent from Nango's connection listing"},
            )
            deleted += 1
    return deleted


async def run_schedule(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    nango: NangoClient,
    environment: str,
    interval_seconds: float,
) -> None:
    """Reconcile about every ``interval_seconds`` across all instances; runs until cancelled.

    Every instance wakes on a jittered timer and tries; the lease lets one run at a time, and a
    run that succeeded within 90% of the interval (by any instance) makes the others skip.
    """
    jitter = random.SystemRandom()
    holder = new_holder()
    await anyio.sleep(jitter.uniform(0, min(interval_seconds, 30.0)))
    while True:
        try:
            await reconcile(
                sessionmaker=sessionmaker,
                nango=nango,
                environment=environment,
                trigger="schedule",
                holder=holder,
                skip_if_succeeded_within=timedelta(seconds=interval_seconds * 0.9),
            )
        except ReconcileBusy:
            pass
        except Exception as error:  # the next tick retries; one bad run must not stop the timer
            log.warning("scheduled_reconcile_failed", error_type=type(error).__name__)
        await anyio.sleep(interval_seconds * jitter.uniform(0.8, 1.0))
