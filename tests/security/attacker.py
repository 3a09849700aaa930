"""What the security tests attack with: a real ``nango-registry serve`` on a loopback port, and
requests written byte by byte on a socket where the framing is the point."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import TEST_API_KEY, TEST_SIGNING_KEY
from tests.net import free_port

SLOW_LOOKUPS = Path(__file__).resolve().parent / "slow"
BEARER = f"Authorization: Bearer {TEST_API_KEY}"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    closed: bool  # the server closed the connection after answering

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def send(self, raw: bytes, *, timeout: float = 10.0) -> Answer:
        """Send ``raw`` as it is on a new connection; read one answer."""
        with self.connect(timeout) as sock:
            started = time.monotonic()
            sock.sendall(raw)
            return read_answer(sock, started)

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
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def read_answer(sock: socket.socket, started: float) -> Answer:
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
        closed=_closed(sock),
    )


def _closed(sock: socket.socket) -> bool:
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
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "DATABASE_URL": database_url,
        "SECRET_KEY": "test-secret-key",
        "NANGO_WEBHOOK_SIGNING_KEYS": TEST_SIGNING_KEY,
        "REGISTRY_API_KEYS": TEST_API_KEY,
        "NANGO_HOST": "http://127.0.0.1:9",
        "NANGO_SECRET_KEY": "test-nango-secret-key",
        "LOG_LEVEL": "info",
        **settings,
    }
    if slow_lookups:
        env["PYTHONPATH"] = str(SLOW_LOOKUPS)
    command = Path(sys.executable).with_name("nango-registry")
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(command), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(process=process, port=port, log=log)
    try:
        _wait_until_serving(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_serving(server: Server) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"serve exited:\n{server.text()[-3000:]}")
        try:
            if server.request("GET", "/healthz", timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"serve did not answer /healthz within 30 s:\n{server.text()[-3000:]}")
