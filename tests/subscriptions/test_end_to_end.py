"""Push end to end: real webhooks change connections, the feed's events reach subscribers on
loopback ports that verify every request with the ``standardwebhooks`` library."""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.subscriptions.dispatcher import Claimed, Dispatcher
from tests import secret_scan
from tests.subscriptions.subscriber import Received, Subscriber, wait_for
from tests.webhooks.helpers import auth_body, signed_headers

FAST = {
    "subscription_poll_seconds": 0.1,
    "subscription_retry_schedule": "0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3,0.3",
}


@pytest.fixture
def subscribers() -> Iterator[list[Subscriber]]:
    made: list[Subscriber] = []
    yield made
    for subscriber in made:
        subscriber.stop()


@pytest.fixture
def make(make_client: Any) -> Any:
    """The app with a dispatcher that looks and retries often."""
    return functools.partial(make_client, **FAST)


def subscribe(
    client: TestClient, auth_headers: dict[str, str], subscriber: Subscriber, **body: Any
) -> int:
    response = client.post(
        "/v1/subscriptions", json={"url": subscriber.url, **body}, headers=auth_headers
    )
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    secret_scan.register_secret(data["secret"])
    subscriber.secret = data["secret"]
    return int(data["id"])


def webhook(client: TestClient, **fields: Any) -> None:
    body = auth_body(**fields)
    response = client.post("/webhooks/nango", content=body, headers=signed_headers(body))
    assert response.status_code == 200, response.text


def change_connections(client: TestClient, count: int = 3) -> None:
    """Each connection is created, breaks and recovers: three events each, interleaved."""
    for n in range(count):
        owner = {"end_user_id": f"u{n % 2}"}
        webhook(client, connection_id=f"c{n}", tags=owner)
    for n in range(count):
        webhook(client, connection_id=f"c{n}", operation="refresh", success=False)
    for n in range(count):
        webhook(client, connection_id=f"c{n}", operation="refresh")


def feed(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, type, end_user_id, connection_pk FROM feed_events ORDER BY id")
        ).all()
    return [{"id": r[0], "type": r[1], "end_user_id": r[2], "connection_pk": r[3]} for r in rows]


def check_in_order_per_connection(received: list[Received]) -> None:
    by_connection: dict[str, list[int]] = defaultdict(list)
    for item in received:
        by_connection[item.connection_id].append(item.event_id)
    for event_ids in by_connection.values():
        assert event_ids == sorted(event_ids)


def test_every_event_arrives_exactly_once_in_order_per_connection(
    make: Any, auth_headers: dict[str, str], sync_engine: Engine, subscribers: list[Subscriber]
) -> None:
    client = make()
    everything, some = Subscriber().start(), Subscriber().start()
    subscribers += [everything, some]
    subscribe(client, auth_headers, everything)
    subscribe(
        client, auth_headers, some,
        event_types=["connection.auth_error", "connection.recovered"],
        filters={"end_user_id": "u1"},
    )  # fmt: skip
    change_connections(client, count=4)
    events = feed(sync_engine)
    assert len(events) == 12
    wanted = [
        e["id"]
        for e in events
        if e["type"] in ("connection.auth_error", "connection.recovered")
        and e["end_user_id"] == "u1"
    ]
    assert len(wanted) == 4
    wait_for(lambda: len(everything.accepted()) >= 12 and len(some.accepted()) >= 4, 30)
    time.sleep(0.5)  # anything sent twice would arrive now
    assert sorted(item.event_id for item in everything.received) == [e["id"] for e in events]
    assert sorted(item.event_id for item in some.received) == wanted
    for subscriber in (everything, some):
        assert subscriber.rejected == 0
        ids = [item.webhook_id for item in subscriber.received]
        assert len(ids) == len(set(ids))
        check_in_order_per_connection(subscriber.received)


def test_a_subscriber_down_then_up_receives_everything(
    make: Any, auth_headers: dict[str, str], sync_engine: Engine, subscribers: list[Subscriber]
) -> None:
    client = make()
    subscriber = Subscriber()  # not listening yet: connections are refused
    subscribers.append(subscriber)
    subscription_id = subscribe(client, auth_headers, subscriber)
    change_connections(client, count=2)
    path = f"/v1/subscriptions/{subscription_id}/attempts"
    wait_for(lambda: len(client.get(path, headers=auth_headers).json()["data"]) >= 2, 10)
    subscriber.start()
    wait_for(lambda: len(subscriber.accepted()) >= 6, 30)
    assert sorted(item.event_id for item in subscriber.received) == [
        e["id"] for e in feed(sync_engine)
    ]
    check_in_order_per_connection(subscriber.received)
    attempts = client.get(path, params={"limit": 500}, headers=auth_headers).json()["data"]
    assert {"error", "succeeded"} <= {attempt["outcome"] for attempt in attempts}
    assert {a["error"] for a in attempts if a["outcome"] == "error"} == {"ConnectError"}
    shown = client.get(f"/v1/subscriptions/{subscription_id}", headers=auth_headers).json()
    assert shown["data"]["failing_since"] is None  # a success cleared it


def test_a_subscriber_failing_for_ever_ends_failed_and_disabled_then_replays(
    make: Any, auth_headers: dict[str, str], sync_engine: Engine, subscribers: list[Subscriber]
) -> None:
    # Three tries over about 1.7 s: the third is both the last and past the disabling window.
    client = make(subscription_retry_schedule="0.2,1.5", subscription_disable_after_seconds=1.0)
    subscriber = Subscriber().start()
    subscribers.append(subscriber)
    subscriber.answer = lambda payload: 500
    subscription_id = subscribe(client, auth_headers, subscriber)
    path = f"/v1/subscriptions/{subscription_id}"
    webhook(client, connection_id="c1")
    wait_for(
        lambda: client.get(path, headers=auth_headers).json()["data"]["status"] == "disabled",
        10,
    )
    attempts = client.get(f"{path}/attempts", headers=auth_headers).json()["data"]
    wait_for(lambda: _delivery_statuses(sync_engine) == ["failed"], 10)
    assert [a["try_number"] for a in attempts] == [3, 2, 1]
    assert {(a["outcome"], a["status_code"]) for a in attempts} == {("failed", 500)}
    assert attempts[0]["response_body"] == "ok"

    # Disabled: new events are not queued for it.
    webhook(client, connection_id="c2")
    assert _delivery_statuses(sync_engine) == ["failed"]

    subscriber.answer = lambda payload: 200
    resumed = client.patch(path, json={"status": "active"}, headers=auth_headers).json()
    assert resumed["data"]["status"] == "active"
    replay = client.post(f"{path}/replay", json={"after": 0}, headers=auth_headers)
    assert replay.status_code == 202
    assert replay.json()["data"]["queued"] == 2
    wait_for(lambda: len(subscriber.accepted()) == 2, 10)
    first = subscriber.received[0].webhook_id
    assert first in {item.webhook_id for item in subscriber.accepted()}  # the same id again


def _delivery_statuses(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT status FROM subscription_deliveries"))]


def test_the_trigger_and_replay_choose_the_same_events(
    make: Any, auth_headers: dict[str, str], sync_engine: Engine
) -> None:
    client = make(subscription_dispatch=False)
    filters: list[dict[str, Any]] = [
        {},
        {"event_types": ["connection.created"]},
        {"event_types": ["connection.recovered", "connection.auth_error"]},
        {"filters": {"end_user_id": "u0"}},
        {"filters": {"integration_id": "github", "end_user_id": "u1"}},
        {"filters": {"organization_id": "nobody"}},
        {"filters": {"integration_id": "slack"}},
    ]
    ids = [
        client.post(
            "/v1/subscriptions", json={"url": "http://127.0.0.1:9/x", **body}, headers=auth_headers
        ).json()["data"]["id"]
        for body in filters
    ]
    paused = client.post(
        "/v1/subscriptions", json={"url": "http://127.0.0.1:9/x"}, headers=auth_headers
    ).json()["data"]["id"]
    pausing = client.patch(
        f"/v1/subscriptions/{paused}", json={"status": "paused"}, headers=auth_headers
    )
    assert pausing.json()["data"]["status"] == "paused", pausing.text
    change_connections(client, count=3)
    queued = _queued(sync_engine)
    assert len(queued[ids[0]]) == 9
    assert len(queued[paused]) == 9  # a paused subscription keeps queueing
    assert queued[ids[5]] == queued[ids[6]] == []
    for subscription_id in [*ids, paused]:
        with sync_engine.begin() as conn:
            conn.execute(text("DELETE FROM subscription_deliveries"))
        response = client.post(
            f"/v1/subscriptions/{subscription_id}/replay",
            json={"after": 0},
            headers=auth_headers,
        )
        assert response.json()["data"]["queued"] == len(queued[subscription_id])
        assert _queued(sync_engine)[subscription_id] == queued[subscription_id]


def _queued(engine: Engine) -> dict[int, list[int]]:
    found: dict[int, list[int]] = defaultdict(list)
    with engine.connect() as conn:
        for subscription_id, event_id in conn.execute(
            text("SELECT subscription_id, event_id FROM subscription_deliveries ORDER BY id")
        ):
            found[subscription_id].append(event_id)
    return found


def test_a_committed_webhook_reaches_a_subscriber_without_waiting_for_the_poll(
    make: Any,
    auth_headers: dict[str, str],
    subscribers: list[Subscriber],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The receiver's commit (and on Postgres the feed's NOTIFY) wakes the dispatcher: with a
    one-minute poll, the event still arrives at once."""
    looks: list[int] = []  # what each of the dispatcher's claims took
    claim = Dispatcher.claim

    async def counted(self: Dispatcher) -> list[Claimed]:
        claimed = await claim(self)
        looks.append(len(claimed))
        return claimed

    monkeypatch.setattr(Dispatcher, "claim", counted)
    client = make(subscription_poll_seconds=60)
    subscriber = Subscriber().start()
    subscribers.append(subscriber)
    subscribe(client, auth_headers, subscriber)
    # The look the creation causes finds nothing, and the dispatcher waits: sent before that
    # look, the webhook's event would be found by it, whatever woke the dispatcher.
    wait_for(lambda: len(looks) > 0, 10, "the dispatcher's look after the subscription's creation")
    webhook(client, connection_id="prompt")
    wait_for(lambda: len(subscriber.accepted()) == 1, 5)
    assert subscriber.received[0].connection_id == "prompt"
