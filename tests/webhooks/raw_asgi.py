"""Calling the ASGI app with raw header bytes, which HTTP clients refuse to send.

httpx validates header values (no non-ASCII, no control characters), and a real server parses
them before the app sees them; the app itself must still hold for any bytes an ASGI server can
hand it, so these tests build the scope by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def raw_request(
    app: ASGIApp,
    *,
    method: str = "POST",
    path: str = "/webhooks/nango",
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
    chunk_size: int = 65536,
) -> RawResponse:
    """Send one request to ``app`` (whose lifespan is running) and collect the response."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    chunks = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)] or [b""]
    pending = list(chunks)

    async def receive() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        return {"type": "http.disconnect"}

    start: Message = {}
    parts: list[bytes] = []

    async def send(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await app(scope, receive, send)
    assert start, "the app sent no response"
    return RawResponse(status=start["status"], headers=list(start["headers"]), body=b"".join(parts))
