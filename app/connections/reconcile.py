"""Reconciliation: make the registry agree with Nango's connections API.

Webhooks get lost (docs/nango.md section 3), deletions are opt-in and never sent for bulk
deletes, and connections older than this service were never announced. A run pages through every
connection Nango has, creates the missing ones (attributed from their tags or end user), updates
statuses from ``errors`` and merges attribution; only after a complete listing does it mark as
deleted the local connections Nango no longer has.

Only an ``auth`` entry in a listed connection's ``errors`` means its credentials are broken; a
``sync`` entry (a failing sync) leaves the status alone (docs/nango.md, Correction 2). The listing
names no error type beyond the word ``auth``, so a descriptive type stored from a webhook (say
``refresh_token_external_error``) is kept, and ``auth`` is stored only where none is known.

Safe while webhooks arrive: pages are applied in short transactions (no lock is held while Nango
is asked for the next page), a row changed after the listing started may be newer than what the
listing says and keeps its status, and a tombstone written after the listing started is never
revived. Nango pages by offset, so a deletion at Nango during the listing can shift a connection
past a page boundary: every deletion candidate is confirmed with the listing's exact
``connectionId`` filter before it is marked deleted (never ``search``: Nango's ``ILIKE`` makes a
short legacy ID match hundreds of newer ones, and the one sought can fall off the page).

Connection details: the listing's ``metadata`` is taken (on the same terms as a status: not over
a row changed since the listing started), and after the deletions the run fetches the
configuration of live connections still lacking it (``GET /connections/{id}``, at most
``details_per_run``), the backstop of the fetch after a webhook
(``app.connections.detail_fetches``).

Nango rate-limits its API (docs/nango.md, Correction 5). A run leaves a share of the limit to the
service's other calls (it waits for the next window when the last answer said little is left),
and its calls wait out 429s for up to ``CALL_PATIENCE_SECONDS``, so a large account finishes
instead of failing halfway.
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import anyio

from app.connections import details, store
from app.connections.model import (
    COLUMNS,
    LIVE_STATUSES,
    Attribution,
    Connection,
    ConnectionStatus,
    clean_text,
)
from app.db.database import Database, Statement, Transaction, sql
from app.db.leases import acquire_lease, release_lease
from app.db.types import utcnow
from app.logs import get_logger
from app.metrics import RECONCILE_RUNS
from app.nango.client import NangoClient, NangoError, NangoUnavailable

log = get_logger(__name__)

SOURCE = "reconcile"
LEASE_NAME = "reconcile"
# Renewed after every page, so it only has to outlast one page and one chunk of writes.
LEASE_TTL = timedelta(minutes=5)
PAGE_SIZE = 1000
# Rows written per transaction: short enough that a webhook waiting on SQLite's write lock (or on
# a Postgres row lock) waits milliseconds, not the length of a page.
CHUNK_SIZE = 100
# The one word Nango's listing has for broken credentials (its other error type is "sync").
AUTH_ERROR = "auth"
# Left to the service's other calls to Nango (Connect sessions, deletes): when the last answer
# said fewer than this share of the window's requests remain, wait for the next window.
RATE_LIMIT_RESERVE = 0.1
MAX_PACE_SECONDS = 60.0
# How long one call may wait out Nango's 429s: three of its one-minute windows.
CALL_PATIENCE_SECONDS = 180.0

Key = tuple[str, str]  # (integration_id, connection_id)

START_RUN = sql(
    "INSERT INTO reconcile_runs (trigger, started_at, status, counts)"
    " VALUES (:trigger, :now, 'running', :counts) RETURNING id"
)
FINISH_RUN = sql(
    "UPDATE reconcile_runs SET status = :status, finished_at = :now, counts = :counts,"
    " error = :error WHERE id = :id"
)
SUCCEEDED_SINCE = sql(
    "SELECT id FROM reconcile_runs WHERE status = 'succeeded' AND finished_at > :since LIMIT 1"
)
LIVE_BEFORE = sql(
    "SELECT id, integration_id, connection_id FROM connections"
    " WHERE environment = :environment AND status IN ('active', 'auth_error')"
    " AND updated_at < :started",
    prepare=False,
)


LACKING_DETAILS = sql(
    f"SELECT {COLUMNS} FROM connections"  # noqa: S608 (fixed column names)
    " WHERE environment = :environment AND status IN ('active', 'auth_error')"
    " AND connection_config IS NULL ORDER BY id DESC LIMIT :limit",
    prepare=False,
)
# Absent from a listing entry (not the same as null).
_ABSENT = object()


RECENT_RUNS = sql(
    "SELECT id, trigger, started_at, finished_at, status, counts, error FROM reconcile_runs"
    " WHERE id < :before ORDER BY id DESC LIMIT :limit"
)


@dataclass(frozen=True, slots=True)
class ReconcileRun:
    """One row of ``reconcile_runs``: a run, running or finished."""

    id: int
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    counts: dict[str, int]
    error: str | None


async def recent_runs(
    tx: Transaction, *, limit: int, before_id: int | None = None
) -> list[ReconcileRun]:
    """Runs, newest first (keyset on the id: ``before_id`` continues a listing)."""
    params = {"before": before_id or 2**62, "limit": limit}
    return [ReconcileRun(*row) for row in await tx.fetchall(RECENT_RUNS, params)]


class ReconcileBusy(Exception):
    """Another process holds the reconcile lease."""


@dataclass
class ReconcileCounts:
    seen: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unattributed: int = 0  # connections Nango has that nobody here owns (a state, not a change)
    # metadata taken from the listing, and configurations fetched (GET /connections/{id})
    details: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Listed:
    """One entry of Nango's connection listing, read once."""

    key: Key
    provider: str | None
    broken: bool  # an "auth" entry in its errors
    errors: list[dict[str, str]]
    attribution: Attribution
    metadata: dict[str, Any] | None = None  # None: the listing did not say (older Nango)

    @property
    def status(self) -> str:
        return ConnectionStatus.AUTH_ERROR if self.broken else ConnectionStatus.ACTIVE

    def error_type(self, stored: Connection | None = None) -> str | None:
        """The error type to keep: the stored one if any (a webhook's word is more precise than
        the listing's), else ``auth``; None while the credentials work."""
        if not self.broken:
            return None
        return (stored.error_type if stored is not None else None) or AUTH_ERROR

    def newer_metadata(self, connection: Connection, started: datetime) -> bool:
        """The listing's metadata is to be taken: it differs, and the row has none yet or was
        not changed since the listing started (a write through this service may be newer)."""
        if self.metadata is None or connection.metadata == self.metadata:
            return False
        return connection.metadata is None or connection.updated_at < started

    def agrees_on_status(self, connection: Connection) -> bool:
        if connection.status != self.status:
            return False
        return not self.broken or connection.error_type is not None

    @property
    def detail(self) -> dict[str, Any]:
        return {"nango_errors": self.errors} if self.errors else {}


@dataclass
class _Run:
    database: Database
    nango: NangoClient
    environment: str
    holder: str
    details_per_run: int = 0
    started: datetime = field(default_factory=utcnow)
    lease_renewed: datetime = field(default_factory=utcnow)
    counts: ReconcileCounts = field(default_factory=ReconcileCounts)
    seen: set[Key] = field(default_factory=set)


def new_holder() -> str:
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def reconcile(
    *,
    database: Database,
    nango: NangoClient,
    environment: str,
    trigger: str,
    page_size: int | None = None,
    holder: str | None = None,
    skip_if_succeeded_within: timedelta | None = None,
    details_per_run: int = 0,
) -> ReconcileCounts | None:
    """Run one reconciliation under the lease; raise ReconcileBusy if another one is running.

    With ``skip_if_succeeded_within`` (the scheduler), returns None without running when a run
    finished successfully that recently: checked under the lease, so instances do not repeat it.
    """
    run = _Run(
        database=database,
        nango=nango.patient(CALL_PATIENCE_SECONDS),
        environment=environment,
        holder=holder or new_holder(),
        details_per_run=details_per_run,
    )
    await _renew_lease(run)
    try:
        if skip_if_succeeded_within is not None and await _succeeded_since(
            database, utcnow() - skip_if_succeeded_within
        ):
            return None
        async with database.transaction() as tx:
            row = await tx.fetchone(START_RUN, {"trigger": trigger, "now": utcnow(), "counts": {}})
        assert row is not None
        run_id = int(row[0])
        try:
            await _list_and_apply(run, page_size or PAGE_SIZE)
            run.counts.seen = len(run.seen)
            run.counts.deleted = await _delete_missing(run)
            run.counts.details += await _fetch_missing_details(run)
        except BaseException as error:
            await _finish(database, run_id, status="failed", error=type(error).__name__)
            RECONCILE_RUNS.labels(trigger=trigger, status="failed").inc()
            log.warning("reconcile_failed", trigger=trigger, error=str(error)[:300])
            raise
        await _finish(database, run_id, status="succeeded", counts=run.counts.as_dict())
        RECONCILE_RUNS.labels(trigger=trigger, status="succeeded").inc()
        log.info("reconciled", trigger=trigger, environment=environment, **run.counts.as_dict())
        return run.counts
    finally:
        with anyio.CancelScope(shield=True):
            async with database.transaction() as tx:
                await release_lease(tx, name=LEASE_NAME, holder=run.holder)


async def _renew_lease(run: _Run) -> None:
    async with run.database.transaction() as tx:
        if not await acquire_lease(tx, name=LEASE_NAME, holder=run.holder, ttl=LEASE_TTL):
            raise ReconcileBusy("a reconciliation is already running")
    run.lease_renewed = utcnow()


async def _before_calling_nango(run: _Run) -> None:
    """Keep the lease (rate-limit waits can be long) and pace the run."""
    if utcnow() - run.lease_renewed > LEASE_TTL / 5:
        await _renew_lease(run)
    quota = run.nango.rate_limit
    if quota is None or quota.remaining > quota.limit * RATE_LIMIT_RESERVE:
        return
    wait = min(quota.resets_at - time.monotonic(), MAX_PACE_SECONDS)
    if wait > 0:
        log.info("reconcile_paced", seconds=round(wait, 2), remaining=quota.remaining)
        await anyio.sleep(wait)


async def _succeeded_since(database: Database, since: datetime) -> bool:
    async with database.reader() as tx:
        return await tx.fetchone(SUCCEEDED_SINCE, {"since": since}) is not None


async def _finish(
    database: Database,
    run_id: int,
    *,
    status: str,
    counts: dict[str, int] | None = None,
    error: str | None = None,
) -> None:
    with anyio.CancelScope(shield=True):
        async with database.transaction() as tx:
            await tx.execute(
                FINISH_RUN,
                {
                    "status": status,
                    "now": utcnow(),
                    "counts": counts or {},
                    "error": error,
                    "id": run_id,
                },
            )


async def _list_and_apply(run: _Run, page_size: int) -> None:
    page = 0
    while True:
        await _before_calling_nango(run)
        items = await run.nango.list_connections(page=page, limit=page_size)
        new = 0
        for offset in range(0, len(items), CHUNK_SIZE):
            chunk = []
            for item in items[offset : offset + CHUNK_SIZE]:
                listed = read_listed(item)
                if listed is None or listed.key in run.seen:
                    continue  # offset paging repeats a row when Nango gains one meanwhile
                run.seen.add(listed.key)
                chunk.append(listed)
            new += len(chunk)
            if chunk:
                async with run.database.transaction() as tx:
                    await _apply_chunk(tx, run, chunk)
        await _renew_lease(run)
        if len(items) < page_size:
            return
        if new == 0:
            # A full page of rows already seen: the server is not advancing the offset.
            raise NangoUnavailable(f"Nango's listing did not advance at page {page}")
        page += 1


def read_listed(item: Mapping[str, Any]) -> Listed | None:
    integration_id = clean_text(item.get("provider_config_key"))
    connection_id = clean_text(item.get("connection_id"))
    if integration_id is None or connection_id is None:
        return None
    metadata = item.get("metadata", _ABSENT)
    errors = item.get("errors")
    entries = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
    return Listed(
        key=(integration_id, connection_id),
        provider=clean_text(item.get("provider")),
        broken=any(entry.get("type") == AUTH_ERROR for entry in entries),
        errors=[
            {k: str(v)[:255] for k, v in entry.items() if k in ("type", "log_id")}
            for entry in entries[:10]
        ],
        attribution=Attribution.from_listing(tags=item.get("tags"), end_user=item.get("end_user")),
        # Nango answers null for a connection without metadata: known, and empty.
        metadata=None if metadata is _ABSENT else dict(metadata or {}),
    )


@cache
def _known_statement(count: int) -> Statement:
    # Filtered on connection_id alone, so Postgres uses its own index: with the environment
    # too it may pick the unique index, whose leading column matches every row (seen on a table
    # not analyzed yet, i.e. the first reconcile of a new install: 100x slower).
    placeholders = ", ".join(f":c{i}" for i in range(count))
    return sql(
        f"SELECT {COLUMNS} FROM connections WHERE connection_id IN ({placeholders})",  # noqa: S608
        lock=True,
        # Planned afresh: a first reconcile grows the table from empty (see sql()).
        prepare=False,
    )


async def _load_known(tx: Transaction, run: _Run, chunk: list[Listed]) -> dict[Key, Connection]:
    """The stored connections of a chunk, locked, in one query."""
    ids = sorted({listed.key[1] for listed in chunk})
    rows = await tx.fetchall(
        _known_statement(len(ids)), {f"c{i}": id_ for i, id_ in enumerate(ids)}
    )
    wanted = {listed.key for listed in chunk}
    found = {}
    for row in rows:
        connection = Connection(*row)
        key = (connection.integration_id, connection.connection_id)
        if key in wanted and connection.environment == run.environment:
            found[key] = connection
    return found


async def _apply_chunk(tx: Transaction, run: _Run, chunk: list[Listed]) -> None:
    known = await _load_known(tx, run, chunk)
    history: list[dict[str, Any]] = []
    now = utcnow()
    for listed in chunk:
        connection = known.get(listed.key)
        if connection is None:
            connection = await _create(tx, run, listed, now)
            if connection is not None:
                history.append(_history(connection, listed, "creation", None, now))
                run.counts.unattributed += not connection.attributed
                continue
            # A webhook created it since the chunk was loaded: lock it and merge.
            connection, _ = await store.lock_connection(tx, _new_values(run, listed, now))
        if not _already_agrees(connection, listed):
            history += await _update(tx, run, connection, listed, now)
        run.counts.unattributed += not connection.attributed
    if history:
        await store.record_history(tx, history)


def _new_values(run: _Run, listed: Listed, now: datetime) -> dict[str, Any]:
    return store.new_connection_values(
        environment=run.environment,
        integration_id=listed.key[0],
        connection_id=listed.key[1],
        provider=listed.provider,
        status=listed.status,
        attribution=listed.attribution,
        error_type=listed.error_type(),
        metadata=listed.metadata,
        now=now,
    )


async def _create(tx: Transaction, run: _Run, listed: Listed, now: datetime) -> Connection | None:
    connection = await store.insert_connection(tx, _new_values(run, listed, now))
    run.counts.created += connection is not None
    return connection


def _history(
    connection: Connection, listed: Listed, action: str, from_status: str | None, now: datetime
) -> dict[str, Any]:
    return store.history_row(
        connection,
        source=SOURCE,
        action=action,
        from_status=from_status,
        to_status=connection.status,
        detail=listed.detail,
        now=now,
    )


def _already_agrees(connection: Connection, listed: Listed) -> bool:
    """True when applying ``listed`` would change nothing on ``connection``."""
    return (
        listed.agrees_on_status(connection)
        and not store.owner_changes(connection, listed.attribution)
        and (listed.metadata is None or connection.metadata == listed.metadata)
    )


def _take_status(connection: Connection, listed: Listed, now: datetime) -> None:
    store.set_status(
        connection,
        listed.status,
        error_type=listed.error_type(connection),
        error_description=connection.error_description if listed.broken else None,
        now=now,
    )


async def _update(
    tx: Transaction, run: _Run, connection: Connection, listed: Listed, now: datetime
) -> list[dict[str, Any]]:
    """Bring a stored connection in line with its listing; return the history it made."""
    history = []
    previous = connection.status
    take_metadata = listed.newer_metadata(connection, run.started)
    if connection.status == ConnectionStatus.DELETED:
        # A tombstone newer than the listing may be a deletion the listing has not seen.
        if connection.deleted_at is None or connection.deleted_at < run.started:
            _take_status(connection, listed, now)
            connection.deleted_at = None
            history.append(_history(connection, listed, "restore", previous, now))
    elif connection.updated_at < run.started and not listed.agrees_on_status(connection):
        # A row changed since the listing started may carry newer news (a webhook) than the
        # page; the next run settles it.
        _take_status(connection, listed, now)
        history.append(_history(connection, listed, "status", previous, now))
    if await store.merge_attribution(tx, connection, listed.attribution):
        connection.updated_at = now
        history.append(store.history_row(connection, source=SOURCE, action="tags", now=now))
    run.counts.updated += bool(history)  # a change of status or owner
    if take_metadata:
        connection.metadata = listed.metadata
        connection.updated_at = now
        history.append(_details_history(connection, now))
        run.counts.details += 1
    if history:
        await store.save(tx, connection)
    return history


def _details_history(connection: Connection, now: datetime) -> dict[str, Any]:
    return store.history_row(
        connection, source=SOURCE, action="details", detail={"changed": ["metadata"]}, now=now
    )


async def _delete_missing(run: _Run) -> int:
    async with run.database.reader() as tx:
        rows = await tx.fetchall(
            LIVE_BEFORE, {"environment": run.environment, "started": run.started}
        )
    missing = [row for row in rows if (row[1], row[2]) not in run.seen]
    if missing and not run.seen:
        # An empty listing against a populated registry is more likely a secret key of another
        # environment than every user disconnecting at once; refuse to tombstone everything.
        log.warning("reconcile_empty_listing", environment=run.environment, withheld=len(missing))
        return 0
    deleted = 0
    for pk, integration_id, connection_id in missing:
        if await _still_at_nango(run, (integration_id, connection_id)):
            continue
        async with run.database.transaction() as tx:
            deleted += await _mark_deleted(tx, run, pk)
    return deleted


async def _still_at_nango(run: _Run, key: Key) -> bool:
    """Ask Nango for exactly this connection (``connectionId`` + ``integrationId``)."""
    await _before_calling_nango(run)
    found = await run.nango.list_connections(
        page=0, limit=10, connection_id=key[1], integration_ids=[key[0]]
    )
    return any((listed := read_listed(item)) is not None and listed.key == key for item in found)


async def _mark_deleted(tx: Transaction, run: _Run, pk: int) -> bool:
    connection = await store.lock_connection_by_pk(tx, pk)
    if (
        connection is None
        or connection.status not in LIVE_STATUSES
        or connection.updated_at >= run.started
    ):
        return False  # a webhook got there first
    await store.change_status(
        tx,
        connection,
        ConnectionStatus.DELETED,
        source=SOURCE,
        action="deletion",
        detail={"reason": "absent from Nango's connection listing"},
    )
    return True


async def _fetch_missing_details(run: _Run) -> int:
    """Fetch the configuration of live connections still lacking it (the backstop of the fetch
    after a webhook), newest first, at most ``details_per_run``, paced like the listing. A
    failure ends this part, not the run: the next run continues."""
    if run.details_per_run <= 0:
        return 0
    async with run.database.reader() as tx:
        rows = await tx.fetchall(
            LACKING_DETAILS, {"environment": run.environment, "limit": run.details_per_run}
        )
    fetched = 0
    for row in rows:
        await _before_calling_nango(run)
        try:
            found = await details.fetch_details(
                database=run.database, nango=run.nango, connection=Connection(*row), source=SOURCE
            )
        except NangoError as error:
            log.warning("reconcile_details_stopped", error_type=type(error).__name__)
            break
        fetched += found is not None
    return fetched


async def run_schedule(
    *,
    database: Database,
    nango: NangoClient,
    environment: str,
    interval_seconds: float,
    details_per_run: int = 0,
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
                database=database,
                nango=nango,
                environment=environment,
                trigger="schedule",
                holder=holder,
                skip_if_succeeded_within=timedelta(seconds=interval_seconds * 0.9),
                details_per_run=details_per_run,
            )
        except ReconcileBusy:
            pass
        except Exception as error:  # the next tick retries; one bad run must not stop the timer
            log.warning("scheduled_reconcile_failed", error_type=type(error).__name__)
        await anyio.sleep(interval_seconds * jitter.uniform(0.8, 1.0))
