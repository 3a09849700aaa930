"""The dispatcher against a real database, with a fake event source and a mock subscriber.

Deliveries are arranged directly in the outbox; what a real feed and real subscribers do is in
``test_push.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest
from sqlalchemy import Engine, select, update
from sqlmodel import SQLModel
from standardwebhooks import Webhook

import app.db.tables  # noqa: F401  (registers the tables on the metadata)
from app import metrics
from app.db.database import Database, Transaction
from app.settings import Settings
from app.subscriptions import dispatcher as dispatcher_module
from app.subscriptions import store
from app.subscriptions.dispatcher import Dispatcher
from app.subscriptions.events import Message
from app.subscriptions.model import Outcome
from tests import secret_scan
from tests.conftest import TEST_SECRET
from tests.rows import add_outbox_delivery

pytestmark = pytest.mark.anyio

DELIVERIES = SQLModel.metadata.tables["subscription_deliveries"]
ATTEMPTS = SQLModel.metadata.tables["subscription_attempts"]
SUBSCRIPTIONS = SQLModel.metadata.tables["subscriptions"]
Handler = Callable[[httpx2.Request], Any]


async def fake_events(tx: Transaction, event_id: int) -> Message | None:
    if event_id >= 1000:
        return None  # pruned
    when = datetime(2026, 1, 1, tzinfo=UTC)
    data = {"id": event_id, "connection": {"connection_id": f"c{event_id}"}}
    return Message(type="connection.created", timestamp=when, data=data)


async def subscribe(database: Database, **filters: Any) -> tuple[int, str]:
    created = await store.create_subscription(
        database, secret_key=TEST_SECRET, url="http://subscriber.test/hook", event_types=None,
        filters=filters,
    )  # fmt: skip
    secret_scan.register_secret(created.secret)
    return created.subscription.id, created.secret


def queue(engine: Engine, subscription_id: int, *events: tuple[int, int]) -> list[int]:
    """(event id, connection pk) pairs as pending deliveries; their ids in order."""
    return [add_outbox_delivery(engine, subscription_id, event, pk) for event, pk in events]


def rows(engine: Engine, table: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(table).order_by(table.c.id)).all())


class Subscriber:
    """A mock subscriber: records every request and answers with ``answer``."""

    def __init__(self, answer: Handler | None = None) -> None:
        self.requests: list[httpx2.Request] = []
        self.answer = answer or (lambda request: httpx2.Response(200, text="ok"))

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        result = self.answer(request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, httpx2.Response)
        return result


@pytest.fixture
async def make_dispatcher(
    make_settings: Callable[..., Settings], database: Database
) -> AsyncIterator[Callable[..., Dispatcher]]:
    clients: list[httpx2.AsyncClient] = []

    def build(subscriber: Subscriber, **overrides: Any) -> Dispatcher:
        values = {"subscription_poll_seconds": 0.05, **overrides}
        http = httpx2.AsyncClient(transport=httpx2.MockTransport(subscriber))
        clients.append(http)
        return Dispatcher(
            database=database, http=http, settings=make_settings(**values), events=fake_events
        )

    yield build
    for client in clients:
        await client.aclose()


async def run_until(dispatcher: Dispatcher, done: Callable[[], bool], timeout: float = 10) -> None:
    task = asyncio.create_task(dispatcher.run())
    try:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the dispatcher did not get there in time"
            await asyncio.sleep(0.02)
    finally:
        await dispatcher.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_delivery_is_signed_sent_and_recorded(
    database: Database, sync_engine: Engine, make_dispatcher: Callable[..., Dispatcher]
) -> None:
    subscription_id, secret = await subscribe(database)
    (delivery_id,) = queue(sync_engine, subscription_id, (5, 1))
    subscriber = Subscriber(lambda request: httpx2.Response(204))
    before = metrics.SUBSCRIPTION_ATTEMPTS.labels(outcome="succeeded")._value.get()
    dispatcher = make_dispatcher(subscriber)
    await run_until(dispatcher, lambda: len(rows(sync_engine, ATTEMPTS)) == 1)

    (request,) = subscriber.requests
    payload = Webhook(secret).verify(request.content, dict(request.headers))
    assert payload == {
        "type": "connection.created",
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {"id": 5, "connection": {"connection_id": "c5"}},
    }
    assert request.headers["webhook-id"] == f"msg_{subscription_id}_5"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 10
    (attempt,) = rows(sync_engine, ATTEMPTS)
    assert (attempt.delivery_id, attempt.event_id, attempt.try_number) == (delivery_id, 5, 1)
    assert (attempt.outcome, attempt.status_code, attempt.error) == ("succeeded", 204, None)
    (delivery,) = rows(sync_engine, DELIVERIES)
    assert (delivery.status, delivery.tries, delivery.lease_holder) == ("succeeded", 1, None)
    assert delivery.finished_at is not None
    after = metrics.SUBSCRIPTION_ATTEMPTS.labels(outcome="succeeded")._value.get()
    assert after == before + 1


async def test_failures_are_retried_on_the_schedule_then_the_delivery_fails(
    database: Database, sync_engine: Engine, make_dispatcher: Callable[..., Dispatcher]
) -> None:
    subscription_id, _ = await subscribe(database)
    queue(sync_engine, subscription_id, (1, 1))
    subscriber = Subscriber(lambda request: httpx2.Response(500, text="x" * 5000))
    dispatcher = make_dispatcher(subscriber, subscription_retry_schedule="0.1,0.3")
    await run_until(dispatcher, lambda: rows(sync_engine, DELIVERIES)[0].status == "failed")

    attempts = rows(sync_engine, ATTEMPTS)
    assert [a.try_number for a in attempts] == [1, 2, 3]
    assert {(a.outcome, a.status_code) for a in attempts} == {("failed", 500)}
    assert len(attempts[0].response_body) == 1024
    gaps = [
        (b.attempted_at - a.attempted_at).total_seconds() for a, b in itertools.pairwise(attempts)
    ]
    assert gaps[0] >= 0.1
    assert gaps[1] >= 0.3
    (subscription,) = rows(sync_engine, SUBSCRIPTIONS)
    assert subscription.status == "active"  # five days have not passed
    assert subscription.failing_since is not None


async def test_a_subscription_failing_long_enough_is_disabled_and_a_success_clears_it(
    database: Database, sync_engine: Engine, make_dispatcher: Callable[..., Dispatcher]
) -> None:
    failing, _ = await subscribe(database)
    healthy, _ = await subscribe(database)
    queue(sync_engine, failing, (1, 1), (2, 2))
    queue(sync_engine, healthy, (1, 1))
    with sync_engine.begin() as conn:
        earlier = datetime.now(UTC) - timedelta(hours=1)
        conn.execute(update(SUBSCRIPTIONS).values(failing_since=earlier))

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200 if "healthy" in str(request.url) else 503)

    with sync_engine.begin() as conn:
        conn.execute(
            update(SUBSCRIPTIONS)
            .where(SUBSCRIPTIONS.c.id == healthy)
            .values(url="http://healthy.test/hook")
        )
    dispatcher = make_dispatcher(
        Subscriber(answer), subscription_disable_after_seconds=60, subscription_max_in_flight=1
    )
    settled: list[float] = []

    def disabled_a_while_ago() -> bool:
        """Both sent, and the dispatcher kept polling for 0.5 s after: the disabled one's second
        delivery was free to go had it been claimed."""
        if not settled and len(rows(sync_engine, ATTEMPTS)) >= 2:
            settled.append(time.monotonic())
        return bool(settled) and time.monotonic() - settled[0] > 0.5

    await run_until(dispatcher, disabled_a_while_ago)

    by_id = {row.id: row for row in rows(sync_engine, SUBSCRIPTIONS)}
    assert by_id[failing].status == "disabled"
    assert by_id[failing].disabled_at is not None
    assert by_id[healthy].status == "active"
    assert by_id[healthy].failing_since is None
    sent = [row for row in rows(sync_engine, ATTEMPTS) if row.subscription_id == failing]
    assert len(sent) == 1  # the second delivery waits for a resume


async def test_a_connection_s_events_go_one_at_a_time_in_order(
    database: Database, sync_engine: Engine, make_dispatcher: Callable[..., Dispatcher]
) -> None:
    subscription_id, _ = await subscribe(database)
    first, second, other = queue(sync_engine, subscription_id, (1, 7), (2, 7), (3, 8))
    dispatcher = make_dispatcher(Subscriber())
    claimed = await dispatcher.claim()
    assert sorted(item.id for item in claimed) == [first, other]
    assert await make_dispatcher(Subscriber()).claim() == []  # a second process: nothing free
    # The first one failing (waiting for a retry) still holds the second back.
    with sync_engine.begin() as conn:
        later = datetime.now(UTC) + timedelta(hours=1)
        conn.execute(
            update(DELIVERIES)
            .where(DELIVERIES.c.id == first)
            .values(lease_until=None, lease_holder=None, next_attempt_at=later, tries=1)
        )
    assert await make_dispatcher(Subscriber()).claim() == []
    with sync_engine.begin() as conn:
        conn.execute(update(DELIVERIES).where(DELIVERIES.c.id == first).values(status="failed"))
    (next_one,) = await make_dispatcher(Subscriber()).claim()
    assert next_one.id == second


async def test_at_most_max_in_flight_per_subscription(
    database: Database, sync_engine: Engine, make_dispatcher: Callable[..., Dispatcher]
) -> None:
    busy, _ = await subscribe(database)
    calm, _ = await subscribe(database)
    queue(sync_engine, busy, *((n, n) for n in range(1, 6)))
    queue(sync_engine, calm, (1, 1))
    first = await make_dispatcher(Subscriber(), subscription_max_in_flight=2).claim()
    assert sorted(item.subscription_id for item in first) == [busy, busy, calm]
    # Counted across processes: another dispatcher finds the busy subscription full.
    assert await make_dispatcher(Subscriber(), subscription_max_in_flight=2).claim() == []


async def test_an_expired_lease_is_taken_again_and_the_late_result_is_not_applied(
    database: Database, sync_engine: Engine, make_dispatcher: Callable[..., Dispatcher]
) -> None:
    subscription_id, _ = await subscribe(database)
    queue(sync_engine, subscription_id, (1, 1))
    dead = make_dispatcher(Subscriber())
    (claimed,) = await dead.claim()
    (delivery,) = rows(sync_engine, DELIVERIES)
    assert delivery.lease_holder == dead.holder
    lease = (delivery.lease_until - datetime.now(UTC)).total_seconds()
    assert 25 < lease <= 30  # three timeouts of 10 s: taken up again within a minute
    with sync_engine.begin() as conn:
        conn.execute(update(DELIVERIES).values(lease_until=datetime.now(UTC)))
    alive = make_dispatcher(Subscriber())
    await run_until(alive, lambda: rows(sync_engine, DELIVERIES)[0].status == "succeeded")
    # The first holder's answer arrives late: recorded as an attempt, the delivery unchanged.
    await dead._record(claimed, dispatcher_module.Result(Outcome.FAILED, 5, 500))
    assert rows(sync_engine, DELIVERIES)[0].status == "succeeded"
    assert [row.outcome for row in rows(sync_engine, ATTEMPTS)] == ["succeeded", "failed"]


async def test_paused_subscriptions_wait_and_deleted_ones_are_dropped(
    database: Database, sync_engine: Engine, make_dispatcher: Callable[..., Dispatcher]
) -> None:
    paused, _ = await subscribe(database)
    queue(sync_engine, paused, (1, 1))
    await store.update_subscription(database, paused, {"status": "paused"})
    dispatcher = make_dispatcher(Subscriber())
    assert await dispatcher.claim() == []
    await store.update_subscription(database, paused, {"status": "active"})
    (claimed,) = await dispatcher.claim()
    assert await store.delete_subscription(database, paused) is not None
    assert await dispatcher._attempt(claimed) is None
    assert rows(sync_engine, DELIVERIES) == []


@pytest.mark.parametrize(
    ("answer", "outcome", "error"),
    [
        (httpx2.ConnectError("refused"), "error", "ConnectError"),
        ("slow", "timeout", "timeout"),
        (httpx2.Response(302, headers={"location": "http://elsewhere.test/"}), "failed", None),
    ],
)
async def test_no_answer_a_slow_one_or_a_redirect_is_a_failure(
    database: Database,
    sync_engine: Engine,
    make_dispatcher: Callable[..., Dispatcher],
    answer: Any,
    outcome: str,
    error: str | None,
) -> None:
    subscription_id, _ = await subscribe(database)
    queue(sync_engine, subscription_id, (1, 1))

    async def respond(request: httpx2.Request) -> httpx2.Response:
        if answer == "slow":
            await asyncio.sleep(5)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, httpx2.Response)
        return answer

    dispatcher = make_dispatcher(Subscriber(respond), subscription_timeout_seconds=0.2)
    await run_until(dispatcher, lambda: len(rows(sync_engine, ATTEMPTS)) == 1)
    (attempt,) = rows(sync_engine, ATTEMPTS)
    assert (attempt.outcome, attempt.error) == (outcome, error)
    assert rows(sync_engine, DELIVERIES)[0].status == "pending"  # retried in 5 s


async def test_a_changed_secret_key_or_a_missing_event_sends_nothing(
    database: Database, sync_engine: Engine, make_dispatcher: Callable[..., Dispatcher]
) -> None:
    subscription_id, _ = await subscribe(database)
    queue(sync_engine, subscription_id, (1, 1), (1000, 2))
    subscriber = Subscriber()
    dispatcher = make_dispatcher(subscriber, secret_key="another-key")
    await run_until(dispatcher, lambda: len(rows(sync_engine, ATTEMPTS)) == 2)
    assert subscriber.requests == []
    by_event = {row.event_id: row for row in rows(sync_engine, ATTEMPTS)}
    assert by_event[1].error == "secret_key_changed"
    assert by_event[1000].error == "event_missing"
    statuses = {row.event_id: row.status for row in rows(sync_engine, DELIVERIES)}
    assert statuses == {1: "pending", 1000: "failed"}


async def test_shutdown_cuts_off_a_hanging_send_and_frees_its_lease(
    database: Database,
    sync_engine: Engine,
    make_dispatcher: Callable[..., Dispatcher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatcher_module, "SHUTDOWN_GRACE_SECONDS", 0.1)
    subscription_id, _ = await subscribe(database)
    queue(sync_engine, subscription_id, (1, 1))
    started = asyncio.Event()

    async def hang(request: httpx2.Request) -> httpx2.Response:
        started.set()
        await asyncio.sleep(30)
        return httpx2.Response(200)

    dispatcher = make_dispatcher(Subscriber(hang))
    task = asyncio.create_task(dispatcher.run())
    await asyncio.wait_for(started.wait(), 5)
    await dispatcher.stop()
    await asyncio.wait_for(task, 5)
    (delivery,) = rows(sync_engine, DELIVERIES)
    assert (delivery.status, delivery.tries, delivery.lease_holder) == ("pending", 0, None)
    assert rows(sync_engine, ATTEMPTS) == []


async def test_a_database_failure_while_claiming_is_logged_and_retried(
    database: Database,
    make_dispatcher: Callable[..., Dispatcher],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await subscribe(database)  # without an active subscription it would not claim at all
    dispatcher = make_dispatcher(Subscriber())
    calls = 0

    async def broken() -> list[Any]:
        nonlocal calls
        calls += 1
        raise OSError("database down")

    monkeypatch.setattr(dispatcher, "claim", broken)
    await run_until(dispatcher, lambda: calls >= 2)
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    failed = [line for line in logged if line["event"] == "subscription_claim_failed"]
    # One line per outage, not one per poll.
    assert [line["error_type"] for line in failed] == ["OSError"]


async def test_a_full_subscription_does_not_hold_back_the_others(
    database: Database,
    sync_engine: Engine,
    make_dispatcher: Callable[..., Dispatcher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatcher_module, "MAX_SENDS_PER_PROCESS", 2)  # pages of 8 candidates
    busy, _ = await subscribe(database)
    calm, _ = await subscribe(database)
    queue(sync_engine, busy, *((n, n) for n in range(1, 21)))
    queue(sync_engine, calm, (1, 1))
    claimed = await make_dispatcher(Subscriber(), subscription_max_in_flight=1).claim()
    assert sorted(item.subscription_id for item in claimed) == [busy, calm]


async def test_committed_events_wake_it_once_per_burst_and_not_without_subscriptions(
    database: Database,
    sync_engine: Engine,
    make_dispatcher: Callable[..., Dispatcher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every webhook commits an event: without this, each one cost a claim (two queries)."""
    subscriber = Subscriber()
    dispatcher = make_dispatcher(subscriber, subscription_poll_seconds=60)
    claims = 0
    claim = dispatcher.claim

    async def counted() -> list[Any]:
        nonlocal claims
        claims += 1
        return await claim()

    monkeypatch.setattr(dispatcher, "claim", counted)
    task = asyncio.create_task(dispatcher.run())
    try:
        await asyncio.sleep(0.1)
        for _ in range(50):  # no subscription: events are not even looked at
            dispatcher.event_committed()
        await asyncio.sleep(0.2)
        assert claims == 0
        subscription_id, _ = await subscribe(database)
        dispatcher.wake()  # as the API does after creating one
        await asyncio.sleep(0.1)
        assert claims == 1
        queue(sync_engine, subscription_id, (1, 1))
        for _ in range(50):  # a burst of commits: one look
            dispatcher.event_committed()
            await asyncio.sleep(0)
        deadline = time.monotonic() + 5
        while not subscriber.requests:
            assert time.monotonic() < deadline, "the event did not wake the dispatcher"
            await asyncio.sleep(0.01)
        await asyncio.sleep(dispatcher_module.EVENT_WAKE_SECONDS * 3)
        # The burst's look, the one straight after a claim that found something and the one
        # after the send finished: not one per event (50).
        assert claims == 4
    finally:
        await dispatcher.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
