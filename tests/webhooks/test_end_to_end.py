"""The real thing: ``nango-registry serve`` (uvicorn) on a free loopback port, over a real socket.

Every vector is posted as Nango sends it, the rows are read back from the database, bodies too
large are refused while being read (chunked, no Content-Length), and the server stops on SIGTERM
within the time Nango's senders and orchestrators allow, finishing the delivery in flight. Its
logs are JSON lines with a request ID and carry no key and no signature.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from sqlalchemy import Engine, text

from tests.conftest import TEST_SIGNING_KEY
from tests.serve import Served, serving
from tests.webhooks.helpers import VECTORS, auth_body, sign, signed_headers
from tests.webhooks.rules_model import Event, final_state

SECRET_KEY = "e2e-secret-key-that-must-never-be-logged"
BODY_LIMIT = 65536
STOP_WITHIN_SECONDS = 25


@pytest.fixture
def server(database_url: str, sync_engine: Engine, tmp_path: Path) -> Iterator[Served]:
    settings = {
        # The fixture's URL is the normalised form (sqlite / postgresql+psycopg): the
        # settings must accept it as users would pass it.
        "DATABASE_URL": database_url,
        "NANGO_WEBHOOK_SIGNING_KEYS": TEST_SIGNING_KEY,
        "SECRET_KEY": SECRET_KEY,
        "WEBHOOK_MAX_BODY_BYTES": str(BODY_LIMIT),
        "LOG_LEVEL": "info",
    }
    # In tmp_path: no stray .env file from the working tree.
    with serving(settings, cwd=tmp_path, ready="/readyz", stdout_apart=True) as running:
        yield running


def raw_http(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes as they are and read until the server closes or answers in full."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        # The server may answer and close before reading everything: that is the point.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received or not _complete(received):
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return received


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def table(sync_engine: Engine, query: str, **params: Any) -> list[Any]:
    with sync_engine.connect() as conn:
        return list(conn.execute(text(query), params).all())


def expected_connections(vectors: list[dict[str, str]]) -> dict[tuple[str, str, str], Any]:
    """What the auth vectors, in file order, must leave in the database, by the rules."""
    events: dict[tuple[str, str, str], list[Event]] = defaultdict(list)
    for vector in vectors:
        body = json.loads(vector["body"])
        if body.get("type") != "auth":
            continue
        key = (body["environment"], body["providerConfigKey"], body["connectionId"])
        error = body.get("error") or {}
        events[key].append(Event(body["operation"], body["success"], error.get("type")))
    expected = {key: final_state(sequence) for key, sequence in events.items()}
    return {key: state for key, state in expected.items() if state.status is not None}


def test_vectors_over_a_real_socket_then_sigterm(server: Served, sync_engine: Engine) -> None:
    secrets_in_play = {TEST_SIGNING_KEY, SECRET_KEY}
    with httpx2.Client(base_url=server.base_url, timeout=10.0) as client:
        for number, vector in enumerate(VECTORS):
            body = vector["body"].encode("utf-8")
            headers = {
                "content-type": "application/json",
                "user-agent": "nango/0.71.4 (e2e)",
                "x-nango-hmac-sha256": vector["x_nango_hmac_sha256"],
                "x-nango-signature": vector["x_nango_signature"],
                "x-request-id": f"e2e-vector-{number}",
            }
            secrets_in_play |= {vector["x_nango_hmac_sha256"], vector["x_nango_signature"]}
            response = client.post("/webhooks/nango", content=body, headers=headers)
            assert response.status_code == 200, (vector["name"], response.text)
            assert response.headers["x-request-id"] == f"e2e-vector-{number}"

        deliveries = table(sync_engine, "SELECT body, outcome, headers FROM deliveries")
        assert sorted(row.body for row in deliveries) == sorted(v["body"] for v in VECTORS)
        assert all(row.outcome != "failed" for row in deliveries)
        for row in deliveries:
            kept = row.headers if isinstance(row.headers, dict) else json.loads(row.headers)
            assert not {"x-nango-hmac-sha256", "x-nango-signature"} & set(kept)
            assert not secrets_in_play & set(kept.values())
            assert kept["x-request-id"].startswith("e2e-vector-")

        expected = expected_connections(VECTORS)
        rows = table(
            sync_engine,
            "SELECT environment, integration_id, connection_id, status, error_type"
            " FROM connections",
        )
        assert {
            (row.environment, row.integration_id, row.connection_id): (row.status, row.error_type)
            for row in rows
        } == {key: (state.status, state.error_type) for key, state in expected.items()}

        # A chunked body (no Content-Length) under the limit is read whole and stored.
        chunked = auth_body(connection_id="e2e-chunked", environment="dev")
        secrets_in_play.add(sign(chunked))
        response = client.post(
            "/webhooks/nango",
            content=(chunked[i : i + 7] for i in range(0, len(chunked), 7)),
            headers=signed_headers(chunked),
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "applied"
        stored = len(VECTORS) + 1
        assert len(table(sync_engine, "SELECT id FROM deliveries")) == stored

        # An honest Content-Length over the limit is refused before reading.
        oversize = b'{"type":"auth","pad":"' + b"x" * BODY_LIMIT + b'"}'
        secrets_in_play.add(sign(oversize))
        response = client.post(
            "/webhooks/nango", content=oversize, headers=signed_headers(oversize)
        )
        assert response.status_code == 413

    # No Content-Length at all, chunked past the limit: refused while reading.
    head = (
        "POST /webhooks/nango HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        "Content-Type: application/json\r\n"
        f"X-Nango-Hmac-Sha256: {sign(oversize)}\r\n"
        "Transfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    chunks = [oversize[i : i + 8192] for i in range(0, len(oversize), 8192)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    answer = raw_http(server.port, head + framed)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert len(table(sync_engine, "SELECT id FROM deliveries")) == stored

    # A delivery in flight when SIGTERM arrives (a deploy) is finished and stored, not dropped:
    # half the body is sent, then the signal, then the rest.
    inflight = auth_body(connection_id="e2e-inflight", environment="dev")
    secrets_in_play.add(sign(inflight))
    head = (
        "POST /webhooks/nango HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        "Content-Type: application/json\r\n"
        f"X-Nango-Hmac-Sha256: {sign(inflight)}\r\n"
        f"Content-Length: {len(inflight)}\r\n\r\n"
    ).encode()
    half = len(inflight) // 2
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(head + inflight[:half])
        time.sleep(0.3)  # let uvicorn start the request cycle
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        conn.sendall(inflight[half:])
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
            if _complete(answer):
                break
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["status"] == "applied"
    stored += 1
    assert len(table(sync_engine, "SELECT id FROM deliveries")) == stored

    try:
        returncode = server.process.wait(timeout=STOP_WITHIN_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not stop within {STOP_WITHIN_SECONDS} s of SIGTERM")
    # uvicorn re-raises the signal once shut down, so "killed by SIGTERM" is a clean exit too;
    # what matters is that the lifespan's shutdown ran (the engine was disposed).
    assert returncode in {0, -signal.SIGTERM}, server.text()
    assert time.monotonic() - started < STOP_WITHIN_SECONDS

    logs = server.text()
    for secret in secrets_in_play:
        assert secret not in logs
    # Logs go to standard error, every line of it JSON; standard output stays empty.
    assert server.stdout.read_text(encoding="utf-8").strip() == ""
    lines = [json.loads(line) for line in server.log.read_text(encoding="utf-8").splitlines()]
    events = [line.get("event") for line in lines]
    assert "stopped" in events
    assert "Application shutdown complete." in events
    requests = [line for line in lines if line.get("event") == "request"]
    # A webhook's facts (type, outcome, delivery) are on its request's access line.
    webhooks = [line for line in requests if line.get("outcome") is not None]
    assert len(webhooks) == len(VECTORS) + 2  # the vectors, the chunked one, the one in flight
    assert all(line.get("request_id") for line in requests)
    logged_ids = {line["request_id"] for line in webhooks}
    assert {f"e2e-vector-{number}" for number in range(len(VECTORS))} <= logged_ids
    assert [line["status"] for line in requests if line["path"] == "/webhooks/nango"].count(
        413
    ) == 2
