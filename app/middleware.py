"""Pure ASGI middleware: a request ID, one access-log line and one latency sample per request;
and routing by raw path, so an ID containing ``/`` (sent as ``%2F``) is one path segment."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any
from urllib.parse import quote, unquote

import structlog
from starlette.convertors import Convertor, register_url_convertor
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logs import get_logger
from app.metrics import observe_request

log = get_logger("app.access")

# A caller's request ID is echoed into logs and headers, so only a short, plain token is trusted.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _SAFE_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def log_fields(scope: Scope) -> dict[str, Any]:
    """Fields a handler adds to its request's access line (``log_fields(request.scope)[k] = v``)."""
    fields: dict[str, Any] = scope["state"].setdefault("log", {})
    return fields


class RequestContextMiddleware:
    """A request ID for every request, and one access line when it ends.

    The access line is the request's only log line in the common case: handlers add their facts
    to it (the webhook's type and outcome, the API key's name) instead of logging their own.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            elapsed = time.perf_counter() - started
            observe_request(scope=scope, status=status, seconds=elapsed)
            client = scope.get("client")
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                client=client[0] if client else None,
                user_agent=_header(scope, b"user-agent"),
                **scope["state"].get("log", {}),
            )
            structlog.contextvars.clear_contextvars()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            # Echoed into a log line: printable ASCII only, bounded.
            text: str = value.decode("latin-1")[:256]
            return text if text.isprintable() else repr(text)
    return None


class SegmentConvertor(Convertor[str]):
    """``{name:segment}``: one path segment, ``%2F`` in it meaning ``/`` (see RawPathRouting)."""

    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return unquote(value)

    def to_string(self, value: str) -> str:
        return quote(value, safe="")


register_url_convertor("segment", SegmentConvertor())


def _segment(raw: str) -> str:
    # Decoded, then its "%" and "/" escaped again: a segment stays one segment, and
    # SegmentConvertor's unquote gives back exactly what was sent.
    return unquote(raw).replace("%", "%25").replace("/", "%2F")


class RawPathRouting:
    """Route on the raw path: a raw ``/`` always separates segments, ``%2F`` never does.

    Legacy connection IDs (and end-user IDs) may contain ``/``. Servers hand the app a decoded
    path, in which ``X%2Fevents`` (the connection ``X/events``) and ``X/events`` (the history of
    ``X``) look the same; routing on it let one URL name two resources. Here the path is rebuilt
    from the raw one with each segment's own ``/`` kept escaped, and ``{id:segment}`` parameters
    decode it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw: bytes | None = scope.get("raw_path")
            if raw and b"%" in raw:
                text = raw.decode("latin-1").partition("?")[0]
                scope["path"] = "/".join(_segment(part) for part in text.split("/"))
        await self.app(scope, receive, send)
