"""Issue 13, point 1: a lookup cannot take the receiver down.

A holder of a read-only key floods the API with the slowest lookups there are (statements that
never end by themselves, tests/security/slow), more at once than the pool has connections. Every
one is cut off at DATABASE_STATEMENT_TIMEOUT_SECONDS with a 503 and Retry-After, counted; one
whose client leaves is cancelled at once; and meanwhile a webhook is stored and answered 2xx in
under a second and /healthz in under 100 ms.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.db.database import RESERVED_CONNECTIONS, SQLITE_READERS
from tests.security.attacker import BEARER, Answer, Server, serve
from tests.webhooks.helpers import auth_body, sign

POOL_SIZE, MAX_OVERFLOW = 5, 2
FLOOD = 12  # concurrent lookups: more than the pool's 7 connections
WAIT_SECONDS = 10.0
# The line each slow lookup logs as it starts (tests/security/slow, not imported: it patches).
STARTED = "slow_lookup_started"
STATEMENT_TIMEOUT = 2.0
LOOKUP = "/v1/connections?tag[plan]=pro"


def _webhook(server: Server, connection_id: str) -> Answer:
    body = auth_body(connection_id=connection_id)
    return server.request(
        "POST",
        "/webhooks/nango",
        "Content-Type: application/json",
        f"X-Nango-Hmac-Sha256: {sign(body)}",
        body=body,
    )


def _slots(engine: Engine) -> int:
    """How many lookups run at once: the API's share of the pool, or SQLite's readers."""
    if engine.dialect.name == "postgresql":
        return POOL_SIZE + MAX_OVERFLOW - RESERVED_CONNECTIONS
    return SQLITE_READERS


def _wait_for_lookups(server: Server, count: int, what: str) -> None:
    """Until ``count`` slow lookups have started (each says so as it sends its statement)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while sum(line.get("event") == STARTED for line in server.lines()) < count:
        assert time.monotonic() < deadline, f"{what}: not within {WAIT_SECONDS} s"
        time.sleep(0.02)


def _flood(server: Server, stop: threading.Event, answers: list[Answer]) -> None:
    while not stop.is_set():
        answers.append(server.request("GET", LOOKUP, BEARER, timeout=30))


def test_a_flood_of_slow_lookups_starves_no_webhook(
    tmp_path: Path, database_url: str, sync_engine: Engine
) -> None:
    settings = {
        "DATABASE_STATEMENT_TIMEOUT_SECONDS": str(STATEMENT_TIMEOUT),
        "DATABASE_POOL_SIZE": str(POOL_SIZE),
        "DATABASE_MAX_OVERFLOW": str(MAX_OVERFLOW),
    }
    with serve(tmp_path, database_url, slow_lookups="yes", **settings) as server:
        stop = threading.Event()
        answers: list[Answer] = []
        with ThreadPoolExecutor(FLOOD) as pool:
            for _ in range(FLOOD):
                pool.submit(_flood, server, stop, answers)
            try:
                _wait_for_lookups(server, _slots(sync_engine), "every API slot taken")
                webhooks = [_webhook(server, f"flood-{n}") for n in range(3)]
                probes = [server.request("GET", "/healthz") for _ in range(5)]
            finally:
                stop.set()
        metrics = server.request("GET", "/metrics", BEARER).body.decode()

    assert [answer.status for answer in webhooks] == [200, 200, 200]
    assert max(answer.seconds for answer in webhooks) < 1.0, webhooks
    with sync_engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM connections")).scalar_one()
    assert stored == 3
    assert max(probe.seconds for probe in probes) < 0.1, probes
    # Each lookup was cut off after its time, never left to run: 503, retry later.
    assert answers
    for answer in answers:
        assert answer.status == 503, answer
        assert answer.json()["error"]["code"] in {"query_timeout", "database_unavailable"}
        assert answer.headers["retry-after"]
    assert any(answer.json()["error"]["code"] == "query_timeout" for answer in answers)
    assert max(answer.seconds for answer in answers) < STATEMENT_TIMEOUT + 6
    counted = re.search(
        r'nango_registry_query_timeouts_total\{route="/v1/connections"\} (\S+)', metrics
    )
    assert counted
    assert float(counted[1]) >= 1


def test_a_lookup_whose_client_leaves_is_cancelled(
    tmp_path: Path, database_url: str, sync_engine: Engine
) -> None:
    settings = {"DATABASE_STATEMENT_TIMEOUT_SECONDS": "30"}
    with serve(tmp_path, database_url, slow_lookups="yes", **settings) as server:
        with server.connect() as sock:
            sock.sendall(f"GET {LOOKUP} HTTP/1.1\r\nHost: x\r\n{BEARER}\r\n\r\n".encode())
            _wait_for_lookups(server, 1, "the lookup's start")
        left = time.monotonic()
        # Its access line is written once its work is cancelled: long before 30 s.
        deadline = left + 5
        while not [line for line in server.lines() if line.get("status") == 499]:
            assert time.monotonic() < deadline, server.text()[-2000:]
            time.sleep(0.05)
        if sync_engine.dialect.name == "postgresql":
            with sync_engine.connect() as conn:
                running = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'"
                    )
                ).scalar_one()
            assert running == 0
        # Nothing is held: the server answers lookups (cut off in time) and webhooks alike.
        assert _webhook(server, "after-the-leave").status == 200


@pytest.mark.parametrize("count", [10, 11, 150])
def test_at_most_ten_tag_filters(
    client: TestClient, auth_headers: dict[str, str], count: int
) -> None:
    query = "&".join(f"tag[k{n}]=v" for n in range(count))
    answer = client.get(f"/v1/connections?{query}", headers=auth_headers)
    if count <= 10:
        assert answer.status_code == 200
        return
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "invalid_parameter"
    assert error["details"]["parameter"] == "tag[k10]"
    assert "at most 10" in error["message"]
