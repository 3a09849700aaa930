"""The dispatcher: sends what the outbox holds, in every process of the service.

Each process runs one (``app.lifespan``). A due delivery is taken by exactly one of them: the
claim sets an expiring lease on the row (``lease_until``, ``lease_holder``) in one statement,
under ``FOR UPDATE SKIP LOCKED`` on Postgres and under SQLite's single writer lock there, the
same expiring-lease idea as ``app.db.leases`` but per row. The HTTP request is sent outside any
transaction; its outcome is written with the lease holder as a condition. A process that dies
mid-attempt leaves its lease to expire (three timeouts: 30 s by default), after which any
process takes the delivery again: nothing is lost, and the subscriber may see it twice
(at-least-once; the ``webhook-id`` is the same, so it can tell).

Order: a delivery is not claimed while an earlier one of the same subscription and connection
is pending (queued, leased or waiting for a retry), so a consumer sees a connection's events in
the order they happened. Events of different connections go out concurrently, at most
``SUBSCRIPTION_MAX_IN_FLIGHT`` per subscription across the processes.

Wake-ups: a committed feed event (``event_committed``, from the process's ``FeedSignal``: the
feed's NOTIFY on Postgres, this process's own commits on both), coalesced so that a burst of
webhooks costs one look per ``EVENT_WAKE_SECONDS``, not one per webhook; a poll every
``SUBSCRIPTION_POLL_SECONDS`` (which also notices retries coming due); and at once in the
process that finished a send or changed a subscription. Events are ignored while no
subscription is active (one cheap query at each poll says so), so a service without
subscribers does no dispatcher work per webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
import httpx2
import pydantic_core

from app.db.database import Database, Transaction, sql
from app.db.types import utcnow
from app.logs import get_logger
from app.metrics import (
    SUBSCRIPTION_ATTEMPTS,
    SUBSCRIPTION_BACKLOG_AGE,
    SUBSCRIPTION_DELIVERIES,
)
from app.settings import Settings
from app.subscriptions import signing
from app.subscriptions.events import EventSource, Message, load_feed_event
from app.subscriptions.model import MAX_KEPT_BODY, Outcome

log = get_logger(__name__)

# Sends one process runs at once, across all subscriptions.
MAX_SENDS_PER_PROCESS = 32
# How long an in-flight send may finish on shutdown before it is cut off and its lease freed.
SHUTDOWN_GRACE_SECONDS = 5.0
BACKLOG_EVERY_SECONDS = 5.0
# A burst of committed events wakes the dispatcher once per this many seconds, not per event.
EVENT_WAKE_SECONDS = 0.05

ANY_ACTIVE = sql("SELECT 1 FROM subscriptions WHERE status = 'active' LIMIT 1")

# Due deliveries that wait for no earlier one of their connection, oldest first, a page at a time
# (keyset on next_attempt_at, id).
CANDIDATES = sql(
    "SELECT d.id, d.subscription_id, d.next_attempt_at FROM subscription_deliveries d"
    " JOIN subscriptions s ON s.id = d.subscription_id"
    " WHERE d.status = 'pending' AND d.next_attempt_at <= :now"
    " AND (d.next_attempt_at, d.id) > (:after_time, :after_id)"
    " AND (d.lease_until IS NULL OR d.lease_until <= :now) AND s.status = 'active'"
    " AND NOT EXISTS (SELECT 1 FROM subscription_deliveries e"
    " WHERE e.subscription_id = d.subscription_id AND e.connection_pk = d.connection_pk"
    " AND e.status = 'pending' AND e.id < d.id)"
    " ORDER BY d.next_attempt_at, d.id LIMIT :limit"
)
# Pages of candidates read per claim: enough to get past a subscription that is full (at
# SUBSCRIPTION_MAX_IN_FLIGHT) to the others, bounded so a huge backlog costs a bounded read.
CANDIDATE_PAGES = 4
IN_FLIGHT = sql(
    "SELECT subscription_id, COUNT(*) FROM subscription_deliveries"
    " WHERE status = 'pending' AND lease_until > :now GROUP BY subscription_id"
)
CLAIM = sql(
    "UPDATE subscription_deliveries SET lease_until = :until, lease_holder = :holder"
    " WHERE id = :id AND status = 'pending' AND (lease_until IS NULL OR lease_until <= :now)"
    " RETURNING id, subscription_id, event_id, tries",
    postgres="UPDATE subscription_deliveries SET lease_until = :until, lease_holder = :holder"
    " WHERE id = (SELECT id FROM subscription_deliveries WHERE id = :id AND status = 'pending'"
    " AND (lease_until IS NULL OR lease_until <= :now) FOR UPDATE SKIP LOCKED)"
    " RETURNING id, subscription_id, event_id, tries",
)
RELEASE = sql(
    "UPDATE subscription_deliveries SET lease_until = NULL, lease_holder = NULL"
    " WHERE id = :id AND lease_holder = :holder"
)
TARGET = sql("SELECT url, secret_salt, secret_check FROM subscriptions WHERE id = :id")
RECORD_ATTEMPT = sql(
    "INSERT INTO subscription_attempts (subscription_id, delivery_id, event_id, try_number,"
    " attempted_at, outcome, status_code, latency_ms, response_body, error)"
    " SELECT :subscription_id, :delivery_id, :event_id, :try_number, :attempted_at, :outcome,"
    " :status_code, :latency_ms, :response_body, :error"
    " WHERE EXISTS (SELECT 1 FROM subscription_deliveries WHERE id = :delivery_id)"
)
FINISH = sql(
    "UPDATE subscription_deliveries SET status = :status, tries = :tries, finished_at = :now,"
    " lease_until = NULL, lease_holder = NULL WHERE id = :id AND lease_holder = :holder"
    " RETURNING id"
)
RETRY_LATER = sql(
    "UPDATE subscription_deliveries SET tries = :tries, next_attempt_at = :next_attempt_at,"
    " lease_until = NULL, lease_holder = NULL WHERE id = :id AND lease_holder = :holder"
    " RETURNING id"
)
SUCCEEDED = sql(
    "UPDATE subscriptions SET failing_since = NULL WHERE id = :id AND failing_since IS NOT NULL"
)
FAILING = sql(
    "UPDATE subscriptions SET failing_since = COALESCE(failing_since, :now)"
    " WHERE id = :id RETURNING failing_since, status"
)
DISABLE = sql(
    "UPDATE subscriptions SET status = 'disabled', disabled_at = :now, updated_at = :now"
    " WHERE id = :id AND status = 'active'"
)
# The column itself, not MIN(): SQLite converts a column's values to datetimes, not an aggregate's.
OLDEST_PENDING = sql(
    "SELECT d.created_at FROM subscription_deliveries d"
    " JOIN subscriptions s ON s.id = d.subscription_id"
    " WHERE d.status = 'pending' AND s.status = 'active' ORDER BY d.id LIMIT 1"
)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    subscription_id: int
    event_id: int
    tries: int


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    latency_ms: int = 0
    status_code: int | None = None
    response_body: str | None = None
    error: str | None = None
    # Nothing to retry: the event no longer exists.
    final: bool = False


def lease_seconds(settings: Settings) -> float:
    """Long enough for a send and the writes around it, short enough to recover within a
    minute (30 s with the default 10 s timeout)."""
    return 3 * settings.subscription_timeout_seconds


async def _read_head(response: httpx2.Response) -> bytes:
    """The first MAX_KEPT_BODY bytes of an answer; the rest is not read."""
    kept = b""
    async for chunk in response.aiter_bytes():
        kept += chunk
        if len(kept) >= MAX_KEPT_BODY:
            break
    return kept[:MAX_KEPT_BODY]


class Dispatcher:
    def __init__(
        self,
        *,
        database: Database,
        http: httpx2.AsyncClient,
        settings: Settings,
        events: EventSource = load_feed_event,
    ) -> None:
        self._database = database
        self._http = http
        self._settings = settings
        self._events = events
        self._secret_key = settings.secret_key.get_secret_value() if settings.secret_key else None
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._sending: dict[int, asyncio.Task[None]] = {}
        self._stopping = False
        self._backlog_at = 0.0
        self._claim_failing = False
        # Whether any subscription is active, as last read; None: read it at the next look.
        self._active: bool | None = None
        self._event_timer: asyncio.TimerHandle | None = None

    def wake(self) -> None:
        """Look for due deliveries now (a subscription created or resumed, a replay...)."""
        self._active = None
        self._wake.set()

    def event_committed(self) -> None:
        """A feed event committed: look soon, once for a whole burst, and not at all while no
        subscription is active (a new one is noticed at the next poll, or at once by ``wake``)."""
        if self._active is False or self._event_timer is not None or self._stopping:
            return
        self._event_timer = asyncio.get_running_loop().call_later(
            EVENT_WAKE_SECONDS, self._event_wake
        )

    def _event_wake(self) -> None:
        self._event_timer = None
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            claimed = await self._claim_safely()
            for delivery in claimed:
                task = asyncio.create_task(self._deliver(delivery), name=f"send-{delivery.id}")
                self._sending[delivery.id] = task
            if claimed and len(self._sending) < MAX_SENDS_PER_PROCESS:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self._settings.subscription_poll_seconds)
            except TimeoutError:
                self._active = None  # each poll reads it again: subscriptions made elsewhere

    async def stop(self) -> None:
        """Claim nothing more; let sends in flight finish briefly, then cut them off."""
        self._stopping = True
        if self._event_timer is not None:
            self._event_timer.cancel()
            self._event_timer = None
        self._wake.set()
        running = list(self._sending.values())
        if running:
            _, late = await asyncio.wait(running, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # Claiming ---------------------------------------------------------------------------------

    async def _claim_safely(self) -> list[Claimed]:
        try:
            await self._measure_backlog()
            if not await self._any_active():
                return []
            claimed = await self.claim()
        except Exception as error:  # the database is down or busy: try again at the next poll
            if not self._claim_failing:  # one line per outage, not one per poll
                log.warning("subscription_claim_failed", error_type=type(error).__name__)
            self._claim_failing = True
            return []
        if self._claim_failing:
            log.info("subscription_claim_recovered")
            self._claim_failing = False
        return claimed

    async def _any_active(self) -> bool:
        if self._active is None:
            async with self._database.reader() as tx:
                self._active = await tx.fetchone(ANY_ACTIVE) is not None
        return self._active

    async def claim(self) -> list[Claimed]:
        """Take the due deliveries this process has room for."""
        room = MAX_SENDS_PER_PROCESS - len(self._sending)
        if room <= 0:
            return []
        now = utcnow()
        chosen = await self._choose(now, room)
        if not chosen:
            return []
        until = now + timedelta(seconds=lease_seconds(self._settings))
        claimed = []
        async with self._database.transaction() as tx:
            for delivery_id in chosen:
                params = {"id": delivery_id, "now": now, "until": until, "holder": self.holder}
                row = await tx.fetchone(CLAIM, params)
                if row is not None:
                    claimed.append(Claimed(*row))
        return claimed

    async def _choose(self, now: datetime, room: int) -> list[int]:
        """Up to ``room`` candidates, no subscription beyond its share of requests in flight."""
        limit = self._settings.subscription_max_in_flight
        chosen: list[int] = []
        after: tuple[datetime, int] = (now - timedelta(days=3650), 0)
        async with self._database.reader() as tx:
            in_flight: Counter[int] = Counter(dict(await tx.fetchall(IN_FLIGHT, {"now": now})))
            for _ in range(CANDIDATE_PAGES):
                page = await tx.fetchall(
                    CANDIDATES,
                    {"now": now, "limit": room * 4, "after_time": after[0], "after_id": after[1]},
                )
                for delivery_id, subscription_id, _due in page:
                    if delivery_id in self._sending or in_flight[subscription_id] >= limit:
                        continue
                    in_flight[subscription_id] += 1
                    chosen.append(delivery_id)
                    if len(chosen) == room:
                        return chosen
                if len(page) < room * 4:
                    break
                after = (page[-1][2], page[-1][0])
        return chosen

    async def _measure_backlog(self) -> None:
        if time.monotonic() - self._backlog_at < BACKLOG_EVERY_SECONDS:
            return
        self._backlog_at = time.monotonic()
        async with self._database.reader() as tx:
            row = await tx.fetchone(OLDEST_PENDING)
        oldest = None if row is None else row[0]
        age = 0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())
        SUBSCRIPTION_BACKLOG_AGE.set(age)

    # Sending ----------------------------------------------------------------------------------

    async def _deliver(self, delivery: Claimed) -> None:
        try:
            result = await self._attempt(delivery)
            if result is not None:
                await self._record(delivery, result)
        except asyncio.CancelledError:
            await self._release(delivery)
            raise
        except Exception:
            # Its lease expires and another try follows; nothing is lost.
            log.exception("subscription_delivery_error", delivery_id=delivery.id)
        finally:
            self._sending.pop(delivery.id, None)
            self._wake.set()

    async def _release(self, delivery: Claimed) -> None:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            async with self._database.transaction() as tx:
                await tx.execute(RELEASE, {"id": delivery.id, "holder": self.holder})

    async def _attempt(self, delivery: Claimed) -> Result | None:
        async with self._database.reader() as tx:
            target = await tx.fetchone(TARGET, {"id": delivery.subscription_id})
            message = await self._events(tx, delivery.event_id)
        if target is None:
            return None  # deleted meanwhile, with its queue
        if message is None:
            return Result(Outcome.ERROR, error="event_missing", final=True)
        url, salt, check = target
        secret = self._secret(delivery.subscription_id, salt, check)
        if secret is None:
            return Result(Outcome.ERROR, error="secret_key_changed")
        return await self._post(url, secret, delivery, message)

    def _secret(self, subscription_id: int, salt: str, check: str) -> str | None:
        if self._secret_key is None:
            return None
        secret = signing.derive_secret(self._secret_key, subscription_id=subscription_id, salt=salt)
        if signing.secret_check(secret) != check:
            log.error(
                "subscription_secret_mismatch",
                subscription_id=subscription_id,
                detail="SECRET_KEY differs from the one the subscription was created with",
            )
            return None
        return secret

    async def _post(self, url: str, secret: str, delivery: Claimed, message: Message) -> Result:
        body = pydantic_core.to_json(message.body())
        message_id = signing.webhook_id(
            subscription_id=delivery.subscription_id, event_id=delivery.event_id
        )
        headers = signing.headers(
            secret, message_id=message_id, timestamp=int(time.time()), body=body
        )
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._settings.subscription_timeout_seconds):
                async with self._http.stream("POST", url, content=body, headers=headers) as answer:
                    head = await _read_head(answer)
        except TimeoutError:
            return Result(Outcome.TIMEOUT, _elapsed(started), error="timeout")
        except httpx2.HTTPError as error:
            # The type only: an error's text may repeat the URL, which can carry a token.
            return Result(Outcome.ERROR, _elapsed(started), error=type(error).__name__)
        outcome = Outcome.SUCCEEDED if 200 <= answer.status_code < 300 else Outcome.FAILED
        text = head.decode("utf-8", errors="replace")
        return Result(outcome, _elapsed(started), answer.status_code, text)

    # Recording --------------------------------------------------------------------------------

    async def _record(self, delivery: Claimed, result: Result) -> None:
        now = utcnow()
        tries = delivery.tries + 1
        async with self._database.transaction() as tx:
            await tx.execute(RECORD_ATTEMPT, _attempt_row(delivery, result, tries, now))
            if result.outcome == Outcome.SUCCEEDED:
                status = "succeeded"
                kept = await self._finish(tx, delivery, status, tries, now)
                await tx.execute(SUCCEEDED, {"id": delivery.subscription_id})
            else:
                status, kept = await self._failed(tx, delivery, result, tries, now)
        SUBSCRIPTION_ATTEMPTS.labels(outcome=result.outcome).inc()
        if status != "pending":
            SUBSCRIPTION_DELIVERIES.labels(status=status).inc()
        log.info(
            "subscription_attempt",
            subscription_id=delivery.subscription_id,
            event_id=delivery.event_id,
            delivery_id=delivery.id,
            try_number=tries,
            outcome=result.outcome,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error=result.error,
            delivery_status=status if kept else "lease_lost",
        )

    async def _finish(
        self, tx: Transaction, delivery: Claimed, status: str, tries: int, now: datetime
    ) -> bool:
        params = {"id": delivery.id, "holder": self.holder, "status": status, "tries": tries}
        return await tx.fetchone(FINISH, {**params, "now": now}) is not None

    async def _failed(
        self, tx: Transaction, delivery: Claimed, result: Result, tries: int, now: datetime
    ) -> tuple[str, bool]:
        schedule = self._settings.subscription_retry_schedule
        if result.final or tries > len(schedule):
            kept = await self._finish(tx, delivery, "failed", tries, now)
            status = "failed"
        else:
            due = now + timedelta(seconds=schedule[tries - 1])
            params = {"id": delivery.id, "holder": self.holder, "tries": tries}
            row = await tx.fetchone(RETRY_LATER, {**params, "next_attempt_at": due})
            kept, status = row is not None, "pending"
        await self._count_failure(tx, delivery.subscription_id, now)
        return status, kept

    async def _count_failure(self, tx: Transaction, subscription_id: int, now: datetime) -> None:
        row = await tx.fetchone(FAILING, {"id": subscription_id, "now": now})
        if row is None or row[1] != "active":
            return
        failing_for = (now - row[0]).total_seconds()
        if failing_for >= self._settings.subscription_disable_after_seconds:
            await tx.execute(DISABLE, {"id": subscription_id, "now": now})
            log.warning(
                "subscription_disabled",
                subscription_id=subscription_id,
                failing_seconds=round(failing_for, 1),
            )


def _elapsed(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _attempt_row(delivery: Claimed, result: Result, tries: int, now: datetime) -> dict[str, Any]:
    return {
        "subscription_id": delivery.subscription_id,
        "delivery_id": delivery.id,
        "event_id": delivery.event_id,
        "try_number": tries,
        "attempted_at": now,
        "outcome": str(result.outcome),
        "status_code": result.status_code,
        "latency_ms": result.latency_ms,
        "response_body": result.response_body,
        "error": result.error,
    }
