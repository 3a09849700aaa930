"""A real ``nango-registry serve`` process: SIGTERM during a burst, workers, shared metrics.

These tests start the console script on a free loopback port, as the Procfile does on a dyno,
and stop it the way Heroku and Render do: SIGTERM, then a hard kill 30 seconds later.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.conftest import TEST_API_KEY, TEST_SIGNING_KEY
from tests.net import free_port
from tests.serve import Served, serving, suite_settings

# Heroku sends SIGKILL 30 s after SIGTERM; the service promises to be gone within 25 s.
EXIT_DEADLINE_SECONDS = 25.0
WEBHOOK_PATH = "/webhooks/nango"


def terminate_and_wait(server: Served) -> float:
    """Send SIGTERM; return the seconds until the process exited."""
    sent = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=EXIT_DEADLINE_SECONDS + 5)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        pytest.fail(f"serve ignored SIGTERM for {EXIT_DEADLINE_SECONDS + 5} s:\n{tail(server)}")
    return time.monotonic() - sent


def tail(server: Served) -> str:
    return server.text()[-4000:]


@contextmanager
def serve(
    tmp_path: Path, database_url: str, *, workers: int = 1, **settings: str
) -> Iterator[Served]:
    with serving(suite_settings(database_url, **settings), cwd=tmp_path, workers=workers) as server:
        yield server


@dataclass
class Burst:
    """Requests fired from several threads until stopped; every answer is kept."""

    answered: list[tuple[int, bytes]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, send: object, threads: int) -> ThreadPoolExecutor:
        assert callable(send)
        pool = ThreadPoolExecutor(max_workers=threads)

        def loop() -> None:
            while not self.stop.is_set():
                try:
                    result = send()
                except (OSError, http.client.HTTPException) as error:
                    # Refused or reset once the server stops accepting: the router's job
                    # on a platform, a client error here. Never a wrong answer.
                    with self.lock:
                        self.failed.append(type(error).__name__)
                    time.sleep(0.05)
                    continue
                with self.lock:
                    self.answered.append(result)

        for _ in range(threads):
            pool.submit(loop)
        return pool

    def count(self) -> int:
        with self.lock:
            return len(self.answered)


def _wait_for(condition: object, seconds: float = 15.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("the burst did not get going")
        time.sleep(0.02)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_during_a_burst_exits_promptly_and_answers_everything_it_accepted(
    tmp_path: Path, database_url: str, workers: int
) -> None:
    with serve(tmp_path, database_url, workers=workers) as server:
        burst = Burst()

        def probe() -> tuple[int, bytes]:
            return server.request("GET", "/healthz", timeout=5)

        pool = burst.run(probe, threads=16)
        _wait_for(lambda: burst.count() >= 50)
        elapsed = terminate_and_wait(server)
        burst.stop.set()
        pool.shutdown(wait=True)
        returncode = server.process.returncode
        output = tail(server)

    assert elapsed < EXIT_DEADLINE_SECONDS, output
    # A single uvicorn process re-raises SIGTERM once its graceful shutdown is done, so it ends
    # "killed by SIGTERM"; the supervisor of several workers exits 0. Either way every worker
    # ran the app's shutdown (connections drained, database pool closed) before exiting.
    assert returncode in {0, -signal.SIGTERM}, output
    assert server.events("stopped") == workers, output
    statuses = {status for status, _ in burst.answered}
    # Every request the server accepted got a real answer, not a 5xx, during shutdown.
    assert statuses == {200}, output
    assert all(json.loads(body) == {"status": "ok"} for _, body in burst.answered)
    assert set(burst.failed) <= {
        "ConnectionRefusedError",
        "ConnectionResetError",
        "RemoteDisconnected",
        "BrokenPipeError",
        "TimeoutError",
    }


def test_several_workers_share_their_metrics(tmp_path: Path, database_url: str) -> None:
    headers = {"Authorization": f"Bearer {TEST_API_KEY}"}

    def healthz_counts() -> set[float]:
        """/healthz's request count as each of four scrapes reports it."""
        counts = set()
        for _ in range(4):
            status, body = server.request("GET", "/metrics", headers=headers)
            assert status == 200
            for line in body.decode().splitlines():
                if line.startswith("nango_registry_request_duration_seconds_count{") and (
                    'route="/healthz"' in line
                ):
                    counts.add(float(line.rsplit(" ", 1)[1]))
        return counts

    with serve(tmp_path, database_url, workers=2) as server:
        for _ in range(40):
            assert server.request("GET", "/healthz")[0] == 200
        # Whichever worker answers the scrape, it reports the requests of both. A request is
        # counted just after its answer is sent, so a scrape right after the last answer may
        # miss it: look again until the scrapes agree (workers that did not share never would).
        deadline = time.monotonic() + 10
        while len(counts := healthz_counts()) != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        terminate_and_wait(server)
    assert len(counts) == 1
    # /healthz was also asked while waiting for the server to come up, so at least 40.
    assert counts.pop() >= 40


def _signed_creation() -> tuple[bytes, dict[str, str]]:
    """A unique auth creation webhook, serialised and signed the way Nango does it."""
    payload = {
        "authMode": "OAUTH2",
        "connectionId": str(uuid.uuid4()),
        "environment": "prod",
        "from": "nango",
        "operation": "creation",
        "provider": "github",
        "providerConfigKey": "github",
        "success": True,
        "tags": {"end_user_id": f"user-{uuid.uuid4().hex[:8]}", "organization_id": "org-1"},
        "type": "auth",
    }
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    signature = hmac.new(TEST_SIGNING_KEY.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "nango/0.71.4",
        "X-Nango-Hmac-Sha256": signature,
    }
    return body, headers


class SlowDelivery:
    """A webhook whose headers arrive before SIGTERM and whose body arrives after it."""

    def __init__(self, port: int) -> None:
        self.body, headers = _signed_creation()
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=30)
        head = [f"POST {WEBHOOK_PATH} HTTP/1.1", "Host: 127.0.0.1"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head += [f"Content-Length: {len(self.body)}", "", ""]
        half = len(self.body) // 2
        self.socket.sendall("\r\n".join(head).encode() + self.body[:half])
        self.rest = self.body[half:]

    def finish(self) -> int:
        with self.socket:
            self.socket.sendall(self.rest)
            response = self.socket.makefile("rb")
            status_line = response.readline().decode()
            return int(status_line.split()[1])


def _stored_dedupe_keys(sync_engine: Engine) -> set[str]:
    with sync_engine.connect() as conn:
        return {row[0] for row in conn.execute(text("SELECT dedupe_key FROM deliveries"))}


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_during_a_webhook_burst_stores_every_acknowledged_delivery(
    tmp_path: Path, database_url: str, sync_engine: Engine, workers: int
) -> None:
    with serve(tmp_path, database_url, workers=workers) as server:
        burst = Burst()

        def deliver() -> tuple[int, bytes]:
            body, headers = _signed_creation()
            status, _ = server.request("POST", WEBHOOK_PATH, body=body, headers=headers)
            return status, body

        pool = burst.run(deliver, threads=12)
        _wait_for(lambda: burst.count() >= 30)
        in_flight = [SlowDelivery(server.port) for _ in range(3)]
        time.sleep(0.3)  # the server has parsed their headers: these requests are in flight
        server.process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        time.sleep(0.3)
        slow_statuses = [delivery.finish() for delivery in in_flight]
        burst.stop.set()
        pool.shutdown(wait=True)
        server.process.wait(timeout=EXIT_DEADLINE_SECONDS + 5)
        elapsed = time.monotonic() - sent
        output = tail(server)

    assert elapsed < EXIT_DEADLINE_SECONDS, output
    assert server.process.returncode in {0, -signal.SIGTERM}, output
    assert server.events("stopped") == workers, output
    # Requests already in flight when SIGTERM arrived are finished, not dropped.
    assert slow_statuses == [200, 200, 200], output
    acknowledged = [body for status, body in burst.answered if 200 <= status < 300]
    acknowledged += [delivery.body for delivery in in_flight]
    assert len(acknowledged) >= 33
    assert all(status < 500 for status, _ in burst.answered), output
    stored = _stored_dedupe_keys(sync_engine)
    missing = [body for body in acknowledged if hashlib.sha256(body).hexdigest() not in stored]
    assert missing == [], f"{len(missing)} acknowledged deliveries were not stored"


def test_a_stalled_request_cannot_hold_shutdown_past_the_grace_period(
    tmp_path: Path, database_url: str, sync_engine: Engine
) -> None:
    grace = 3
    with serve(tmp_path, database_url, GRACEFUL_SHUTDOWN_SECONDS=str(grace)) as server:
        stalled = SlowDelivery(server.port)  # its body never comes
        time.sleep(0.3)
        elapsed = terminate_and_wait(server)
        stalled.socket.close()
        output = tail(server)
    assert grace <= elapsed < grace + 5, output
    assert hashlib.sha256(stalled.body).hexdigest() not in _stored_dedupe_keys(sync_engine)


def test_start_up_says_what_is_configured_and_what_will_fail(
    tmp_path: Path, database_url: str
) -> None:
    """Issue 14, point 5: one summary line, and a warning for each sure failure."""
    with serve(
        tmp_path, database_url, NANGO_WEBHOOK_SIGNING_KEYS=",", SECRET_KEY="short"
    ) as server:
        terminate_and_wait(server)
    lines = server.lines()
    (summary,) = [line for line in lines if line["event"] == "configuration"]
    assert summary["signing_key_environments"] == []
    assert summary["api_keys_configured"] == 1
    problems = [line["problem"] for line in lines if line["event"] == "configuration_warning"]
    assert [problem.split(" ")[0] for problem in problems] == [
        "NANGO_WEBHOOK_SIGNING_KEYS",
        "NANGO_WEBHOOK_SIGNING_KEYS",
        "SECRET_KEY",
    ]
    assert [line["event"] for line in lines].count("database_ready") == 1


def test_make_run_and_serve_take_port_from_dotenv(tmp_path: Path, database_url: str) -> None:
    """Issue 14, point 3: nothing on make run's command line overrides the settings."""
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    (serve_line,) = [line for line in recipe if "nango-registry serve" in line]
    assert serve_line.split("#")[0].split() == ["$(BIN)/nango-registry", "serve"]
    port = free_port()
    (tmp_path / ".env").write_text(
        f"PORT={port}\nDATABASE_URL={database_url}\nLOG_LEVEL=WARNING\n", encoding="utf-8"
    )
    # No HOST, PORT or WEB_CONCURRENCY in its environment: serve finds the port in .env alone.
    with serving({}, cwd=tmp_path, port=port, ready="/readyz") as server:
        assert server.request("GET", "/readyz")[0] == 200
