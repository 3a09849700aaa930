"""Real ``nango-registry serve`` processes dispatching: two at once deliver each event once, and
``kill -9`` of the one sending an event loses nothing (another takes it up once its lease
expires)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import Engine, text

from tests import secret_scan, serve
from tests.conftest import TEST_API_KEY, TEST_SECRET, TEST_SIGNING_KEY
from tests.serve import Served, stop
from tests.subscriptions.subscriber import Subscriber, wait_for
from tests.webhooks.helpers import auth_body, signed_headers

AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}


@pytest.fixture
def servers() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for served in started:
        stop(served)
        secret_scan.add_output(served.text(), source="serve (subscriptions)")


@pytest.fixture
def subscriber() -> Iterator[Subscriber]:
    subscriber = Subscriber().start()
    yield subscriber
    subscriber.hold.clear()
    subscriber.stop()


def start(servers: list[Served], database_url: str, tmp_path: Path, **extra: str) -> Served:
    env = {
        "DATABASE_URL": database_url,
        "SECRET_KEY": TEST_SECRET,
        "REGISTRY_API_KEYS": TEST_API_KEY,
        "NANGO_WEBHOOK_SIGNING_KEYS": TEST_SIGNING_KEY,
        "SUBSCRIPTION_POLL_SECONDS": "0.1",
        "SUBSCRIPTION_RETRY_SCHEDULE": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
        "LOG_LEVEL": "info",
        **extra,
    }
    served = serve.start(env, cwd=tmp_path, log=tmp_path / f"serve-{len(servers)}.log")
    servers.append(served)
    return served


def subscribe(served: Served, subscriber: Subscriber) -> int:
    response = httpx2.post(
        served.base_url + "/v1/subscriptions", json={"url": subscriber.url}, headers=AUTH
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    secret_scan.register_secret(data["secret"])
    subscriber.secret = data["secret"]
    return int(data["id"])


def webhook(served: Served, **fields: Any) -> None:
    body = auth_body(**fields)
    response = httpx2.post(
        served.base_url + "/webhooks/nango", content=body, headers=signed_headers(body)
    )
    assert response.status_code == 200, response.text


def feed_ids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(text("SELECT id FROM feed_events ORDER BY id"))]


def test_two_processes_deliver_each_event_once(
    database_url: str,
    sync_engine: Engine,
    tmp_path: Path,
    servers: list[Served],
    subscriber: Subscriber,
) -> None:
    first = start(servers, database_url, tmp_path)
    second = start(servers, database_url, tmp_path)
    subscribe(first, subscriber)
    for n in range(10):
        webhook(first if n % 2 else second, connection_id=f"c{n}")
        webhook(
            second if n % 2 else first, connection_id=f"c{n}", operation="refresh", success=False
        )
    expected = feed_ids(sync_engine)
    assert len(expected) == 20
    wait_for(lambda: len(subscriber.accepted()) >= 20, 60, "every event")
    wait_for(lambda: _pending(sync_engine) == 0, 10, "the outbox to empty")
    assert sorted(item.event_id for item in subscriber.received) == expected
    assert subscriber.rejected == 0


def _pending(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT COUNT(*) FROM subscription_deliveries WHERE status != 'succeeded'")
            ).scalar_one()
        )


def test_kill_9_of_the_sending_process_loses_nothing(
    database_url: str,
    sync_engine: Engine,
    tmp_path: Path,
    servers: list[Served],
    subscriber: Subscriber,
) -> None:
    # Three timeouts of 2 s: a dead process's lease lapses after 6 s.
    fast = {"SUBSCRIPTION_TIMEOUT_SECONDS": "2"}
    doomed = start(servers, database_url, tmp_path, **fast)
    subscribe(doomed, subscriber)
    subscriber.hold.set()
    webhook(doomed, connection_id="c1")
    wait_for(subscriber.holding.is_set, 10, "the first request")
    os.kill(doomed.process.pid, signal.SIGKILL)
    doomed.process.wait(10)
    subscriber.hold.clear()
    survivor = start(servers, database_url, tmp_path, **fast)
    webhook(survivor, connection_id="c1", operation="refresh", success=False)
    webhook(survivor, connection_id="c2")
    expected = feed_ids(sync_engine)
    assert len(expected) == 3
    wait_for(lambda: _pending(sync_engine) == 0, 30, "the survivor to deliver everything")
    delivered = [item.event_id for item in subscriber.accepted()]
    # The first event reached the subscriber twice: once from the killed process (its answer
    # never read), once from the survivor. Nothing is missing, and c1's order holds.
    assert sorted(set(delivered)) == expected
    assert delivered.count(expected[0]) == 2
    assert delivered.index(expected[1]) > delivered.index(expected[0])
    assert "subscription_attempt" in survivor.text()
