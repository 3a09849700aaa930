"""Issue 13, point 2: limits are enforced while reading, not after.

Sent on raw sockets to a real server: bodies past their limit (declared or not), bodies that
stall, and headers past 64 KB or 100 lines.
"""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.attacker import BEARER, Server, read_answer, serve

BODY_TIMEOUT = 1.0
SESSION = "/v1/connect-sessions"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Server]:
    tmp_path: Path = tmp_path_factory.mktemp("limits")
    with serve(tmp_path, database_url, REQUEST_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT)) as served:
        yield served


def _head(method: str, path: str, *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_bodies_past_their_limit_are_refused_while_reading(server: Server) -> None:
    # Declared: refused before a byte of it is read.
    declared = server.send(
        _head("POST", SESSION, BEARER, "Content-Length: 100000000"), watch_close=True
    )
    assert declared.status == 413
    assert declared.closed
    # Not declared (chunked): refused once 64 KB have come, not after the 10 MB on offer.
    with server.connect() as sock:
        started = time.monotonic()
        sock.sendall(_head("POST", SESSION, BEARER, "Transfer-Encoding: chunked"))
        chunk = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
        sent = 0
        try:
            for _ in range(640):
                sock.sendall(chunk)
                sent += 16384
        except OSError:
            pass  # closed under us: refused
        answer = read_answer(sock, started)
    assert answer.status == 413
    assert answer.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [(SESSION, 408, "body_timeout"), ("/webhooks/nango", 503, "webhook_body_timeout")],
)
@pytest.mark.parametrize("trickle", [False, True])
def test_a_stalled_body_is_cut_off_in_bounded_time(
    server: Server, path: str, status: int, code: str, trickle: bool
) -> None:
    with server.connect() as sock:
        started = time.monotonic()
        sock.sendall(_head("POST", path, BEARER, "Content-Length: 1000"))
        # A byte every 0.3 s (or nothing at all) for as long as the server lets it.
        while time.monotonic() - started < BODY_TIMEOUT + 5:
            if select.select([sock], [], [], 0.3)[0]:
                break
            if trickle:
                sock.sendall(b"{")
        answer = read_answer(sock, started)
    assert answer.status == status, answer
    assert answer.json()["error"]["code"] == code
    assert BODY_TIMEOUT - 0.1 < answer.seconds < BODY_TIMEOUT + 2
    # Nothing was held: the next request is answered at once.
    assert server.request("GET", "/healthz").status == 200


@pytest.mark.parametrize(
    "headers",
    [
        [f"X-Filler-{n}: y" for n in range(101)],  # too many
        [f"X-Filler-{n}: {'y' * 1000}" for n in range(70)],  # 70 KB
    ],
    ids=["101 headers", "70 KB of headers"],
)
def test_too_many_or_too_large_headers_are_431(server: Server, headers: list[str]) -> None:
    for path in ("/v1/connections", "/webhooks/nango", "/healthz"):
        answer = server.send(_head("GET", path, BEARER, *headers))
        assert answer.status == 431, (path, answer)
        assert answer.json()["error"]["code"] == "headers_too_large"
    # Just under both bounds is served.
    fine = [f"X-Filler-{n}: {'y' * 500}" for n in range(90)]
    assert server.send(_head("GET", "/v1/connections", BEARER, *fine)).status == 200
