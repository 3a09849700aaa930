"""A subscriber on a loopback port, as a consumer would write one: it verifies every request
with the ``standardwebhooks`` library and records what it accepted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

from tests import secret_scan
from tests.net import free_port


@dataclass(frozen=True)
class Received:
    webhook_id: str
    event_id: int
    type: str
    connection_id: str
    status: int  # what the subscriber answered


class Subscriber:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.secret: str | None = None
        self.received: list[Received] = []
        self.rejected = 0
        # The status to answer a verified message with.
        self.answer: Callable[[dict[str, Any]], int] = lambda payload: 200
        # While set, requests wait (up to 30 s) until it is cleared: a subscriber that hangs.
        self.hold = threading.Event()
        self.holding = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Subscriber:
        subscriber = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                status = subscriber.handle(body, dict(self.headers.items()))
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        assert self.secret is not None
        # No log line may carry a signature (nor the secret, registered where it is created).
        secret_scan.register_secret(self.secret.removeprefix("whsec_"))
        secret_scan.register_secret(
            *(v for k, v in headers.items() if k.lower() == "webhook-signature")
        )
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            with self._lock:
                self.rejected += 1
            return 401
        if self.hold.is_set():
            self.holding.set()
            deadline = time.monotonic() + 30
            while self.hold.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
        status = self.answer(payload)
        data = payload["data"]
        with self._lock:
            self.received.append(
                Received(
                    webhook_id={k.lower(): v for k, v in headers.items()}["webhook-id"],
                    event_id=data["id"],
                    type=payload["type"],
                    connection_id=data["connection"]["connection_id"],
                    status=status,
                )
            )
        return status

    def accepted(self) -> list[Received]:
        with self._lock:
            return [item for item in self.received if 200 <= item.status < 300]


def wait_for(condition: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.05)
