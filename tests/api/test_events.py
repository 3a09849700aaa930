"""``/v1/events``: the change feed pulled page by page and streamed, over HTTP."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine
from starlette.testclient import TestClient

from app.api.keys import hash_key
from tests.conftest import TEST_API_KEY, TEST_SIGNING_KEY
from tests.rows import feed
from tests.serve import Served, start, stop
from tests.webhooks.helpers import auth_body, signed_headers

AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}


def deliver(client: Any, body: bytes, base: str = "") -> None:
    response = client.post(f"{base}/webhooks/nango", content=body, headers=signed_headers(body))
    assert response.status_code == 200, response.text


def arrange(client: TestClient) -> None:
    """Five events: a (u1/o1 github) created, b (u2 slack) created, a broken, b deleted, a back."""
    deliver(
        client, auth_body(connection_id="a", tags={"end_user_id": "u1", "organization_id": "o1"})
    )
    deliver(client, auth_body(connection_id="b", integration="slack", tags={"end_user_id": "u2"}))
    deliver(client, auth_body(connection_id="a", operation="refresh", success=False))
    deliver(client, auth_body(connection_id="b", integration="slack", operation="deletion"))
    deliver(client, auth_body(connection_id="a", operation="override"))


def pull(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/events", params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def summary(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(event["type"], event["connection"]["connection_id"]) for event in answer["data"]]


def test_pull_pages_oldest_first_and_keeps_its_position(client: TestClient) -> None:
    arrange(client)
    first = pull(client, limit=2)
    assert summary(first) == [("connection.created", "a"), ("connection.created", "b")]
    ids = [event["id"] for event in first["data"]]
    assert first["next_after"] == ids[-1]
    assert ids == sorted(ids)
    rest = pull(client, after=first["next_after"], limit=500)
    assert summary(rest) == [
        ("connection.auth_error", "a"),
        ("connection.deleted", "b"),
        ("connection.recovered", "a"),
    ]
    event = rest["data"][0]
    assert event["source"] == "webhook"
    assert event["delivery_id"] is not None
    assert event["connection"]["error"]["type"] == "refresh_token_external_error"
    assert set(event) == {"id", "type", "occurred_at", "source", "delivery_id", "connection"}
    empty = pull(client, after=rest["next_after"])
    assert empty == {"data": [], "next_after": rest["next_after"]}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"type": "connection.created,connection.deleted"}, ["a", "b", "b"]),
        ({"type": ["connection.auth_error", "connection.recovered"]}, ["a", "a"]),
        ({"end_user_id": "u2"}, ["b", "b"]),
        ({"organization_id": "o1"}, ["a", "a", "a"]),
        ({"integration_id": "slack", "type": "connection.deleted"}, ["b"]),
        ({"end_user_id": "nobody"}, []),
    ],
)
def test_pull_filters(client: TestClient, params: dict[str, Any], expected: list[str]) -> None:
    arrange(client)
    assert [connection for _, connection in summary(pull(client, **params))] == expected


@pytest.mark.parametrize(
    "params", [{"type": "connection.exploded"}, {"limit": 0}, {"limit": 501}, {"after": -1}]
)
def test_pull_refuses_bad_parameters(client: TestClient, params: dict[str, Any]) -> None:
    response = client.get("/v1/events", params=params, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_parameter"


def test_a_read_only_key_may_pull(client: TestClient, sync_engine: Engine) -> None:
    from sqlmodel import Session

    from app.db.tables import ApiKeyTable

    with Session(sync_engine) as session:
        session.add(ApiKeyTable(name="reader", key_hash=hash_key("reader-key"), read_only=True))
        session.commit()
    response = client.get("/v1/events", headers={"Authorization": "Bearer reader-key"})
    assert response.status_code == 200
    assert client.get("/v1/events").status_code == 401


def appended(kind: str) -> float:
    value = REGISTRY.get_sample_value("nango_registry_feed_events_appended_total", {"type": kind})
    return value or 0.0


def test_appended_events_are_counted_by_type(client: TestClient, sync_engine: Engine) -> None:
    before = appended("connection.created"), appended("connection.deleted")
    arrange(client)
    assert appended("connection.created") - before[0] == 2
    assert appended("connection.deleted") - before[1] == 1
    assert len(feed(sync_engine)) == 5


# The stream, from a real server process ---------------------------------------------------


@contextlib.contextmanager
def served(database_url: str, tmp_path: Path, name: str) -> Iterator[Served]:
    env = {
        "DATABASE_URL": database_url,
        "NANGO_WEBHOOK_SIGNING_KEYS": TEST_SIGNING_KEY,
        "REGISTRY_API_KEYS": TEST_API_KEY,
        "SECRET_KEY": "stream-test-secret",
        "FEED_HEARTBEAT_SECONDS": "0.3",
        "FEED_POLL_INTERVAL_SECONDS": "0.2",
        "GRACEFUL_SHUTDOWN_SECONDS": "20",
    }
    server = start(env, cwd=tmp_path, log=tmp_path / f"{name}.log")
    try:
        yield server
    finally:
        stop(server)


class Stream:
    """An open ``/v1/events/stream``: its events and comments as they arrive."""

    def __init__(self, server: Served, headers: dict[str, str] | None = None) -> None:
        self.client = httpx2.Client(base_url=server.base_url, timeout=httpx2.Timeout(10.0))
        request = self.client.build_request(
            "GET", "/v1/events/stream", headers={**AUTH, **(headers or {})}
        )
        self.response = self.client.send(request, stream=True)
        assert self.response.status_code == 200
        assert self.response.headers["content-type"].startswith("text/event-stream")
        self.lines = self.response.iter_lines()
        self.comments: list[str] = []

    def next_event(self) -> dict[str, Any]:
        fields: dict[str, str] = {}
        for line in self.lines:
            if line.startswith(":"):
                self.comments.append(line)
            elif line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif fields:
                data: dict[str, Any] = json.loads(fields["data"])
                assert fields["id"] == str(data["id"])
                assert fields["event"] == data["type"]
                return data
        raise AssertionError("the stream ended")

    def until_end(self) -> list[str]:
        return list(self.lines)

    def close(self) -> None:
        self.response.close()
        self.client.close()


def test_stream_resumes_with_last_event_id_across_a_restart_and_ends_on_shutdown(
    database_url: str, sync_engine: Engine, tmp_path: Path
) -> None:
    with served(database_url, tmp_path, "first") as server:
        stream = Stream(server)
        deliver(httpx2, auth_body(connection_id="a"), server.base_url)
        deliver(httpx2, auth_body(connection_id="a", operation="deletion"), server.base_url)
        first, second = stream.next_event(), stream.next_event()
        assert [first["type"], second["type"]] == ["connection.created", "connection.deleted"]
        time.sleep(0.8)
        started = time.monotonic()
        server.process.terminate()
        rest = stream.until_end()  # the server ends the stream: shutdown is not held for 20 s
        server.process.wait(15)
        assert time.monotonic() - started < 10
        assert ": heartbeat" in stream.comments + rest
        stream.close()
    with served(database_url, tmp_path, "second") as server:
        deliver(httpx2, auth_body(connection_id="c"), server.base_url)
        resumed = Stream(server, headers={"Last-Event-ID": str(first["id"])})
        assert resumed.next_event()["id"] == second["id"]
        third = resumed.next_event()
        assert (third["type"], third["connection"]["connection_id"]) == ("connection.created", "c")
        resumed.close()
        after = Stream(server, headers={})
        assert after.next_event()["id"] == first["id"]  # no Last-Event-ID, no after: from the start
        after.close()


def test_stream_refuses_a_bad_last_event_id(client: TestClient) -> None:
    response = client.get("/v1/events/stream", headers={**AUTH, "Last-Event-ID": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"parameter": "Last-Event-ID"}
