"""What the security tests attack with: a real ``nango-registry serve`` on a loopback port, and
requests written byte by byte on a socket where the framing is the point."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import TEST_API_KEY
from tests.serve import Served, serving, suite_settings

SLOW_LOOKUPS = Path(__file__).resolve().parent / "slow"
BEARER = f"Authorization: Bearer {TEST_API_KEY}"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    # Whether the server closed the connection after answering; None unless asked for
    # (``watch_close=True``): seeing that it stays open costs a wait, EOF comes at once.
    closed: bool | None = None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    """A running server and requests written as they are on a socket."""

    served: Served

    @property
    def port(self) -> int:
        return self.served.port

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.served.process

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def send(self, raw: bytes, *, timeout: float = 10.0, watch_close: bool = False) -> Answer:
        """Send ``raw`` as it is on a new connection; read one answer (and, with
        ``watch_close``, whether the server then closes the connection)."""
        with self.connect(timeout) as sock:
            started = time.monotonic()
            sock.sendall(raw)
            return read_answer(sock, started, watch_close=watch_close)

    def request(
        self, method: str, path: str, *headers: str, body: bytes = b"", timeout: float = 10.0
    ) -> Answer:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
        if body or method in {"POST", "PUT", "PATCH"}:
            lines.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        return self.send(raw, timeout=timeout)

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        return self.served.lines()

    def text(self) -> str:
        return self.served.text()


def read_answer(sock: socket.socket, started: float, *, watch_close: bool = False) -> Answer:
    """One HTTP/1.1 answer (Content-Length framed, as this service answers)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    seconds = time.monotonic() - started
    return Answer(
        status=int(status_line.split()[1]),
        headers=headers,
        body=rest[:length],
        seconds=seconds,
        closed=_closed(sock) if watch_close else None,
    )


def _closed(sock: socket.socket) -> bool:
    # EOF ends the wait as soon as it comes; only a connection kept open waits it out.
    sock.settimeout(2.0)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, ConnectionResetError):
        return False


@contextmanager
def serve(
    tmp_path: Path, database_url: str, *, slow_lookups: str = "", **settings: str
) -> Iterator[Server]:
    """``nango-registry serve`` with the suite's keys; ``slow_lookups="yes"``: every connection
    listing first runs a statement that never ends by itself (tests/security/slow)."""
    if slow_lookups:
        settings["PYTHONPATH"] = str(SLOW_LOOKUPS)
    with serving(suite_settings(database_url, **settings), cwd=tmp_path) as served:
        yield Server(served)
