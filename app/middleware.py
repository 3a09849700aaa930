"""Pure ASGI middleware: a request ID, one access-log line and one latency sample per request,
the headers every answer carries, and the checks no request skips (header bounds, no duplicated
credential); and routing by raw path, so an ID containing ``/`` (sent as ``%2F``) is one path
segment."""

from __future__ import annotations

import asyncio
import random
import re
import time
from typing import Any
from urllib.parse import quote, unquote

from starlette.convertors import Convertor, register_url_convertor
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db.database import API_WORK
from app.errors import DUPLICATE_HEADER, HEADERS_TOO_LARGE, ErrorCode, error_response
from app.logs import REQUEST_ID, get_logger
from app.metrics import AUTH_FAILURES, SIGNATURE_FAILURES, observe_request
from app.webhooks.signature import Refusal

log = get_logger("app.access")

# A caller's request ID is echoed into logs and headers, so only a short, plain token is trusted.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

# What any request may carry (README, "Deploy"): uvicorn bounds neither with httptools, so the
# bound is checked here, once the headers are read, and a front proxy bounds them before that.
MAX_HEADER_COUNT = 100
MAX_HEADER_BYTES = 64 * 1024
# Credentials a request must carry at most once: with two, "the first one wins" in one layer
# and "the last one wins" in another (a proxy, a log, a replayed capture) would disagree.
# (Children are made when counted, not at import: the CLI imports this module too, before any
# metrics directory a multi-worker serve sets up.)
_SINGLE_HEADERS = {
    b"authorization": AUTH_FAILURES,
    b"x-nango-hmac-sha256": SIGNATURE_FAILURES,
    b"x-nango-signature": SIGNATURE_FAILURES,
}
_NOSNIFF = (b"x-content-type-options", b"nosniff")
# Connection objects hold people's emails: no shared or browser cache may keep an API answer.
_NO_STORE = (b"cache-control", b"no-store")


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _SAFE_REQUEST_ID.match(candidate):
                return candidate
            break
    # 32 hex digits like a UUID's, from the random module (reseeded in forked processes): a
    # request ID correlates lines, it guards nothing, and os.urandom is a system call.
    return f"{random.getrandbits(128):032x}"


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
        bound = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500
        added = [(b"x-request-id", request_id.encode()), _NOSNIFF]
        api = scope["path"].startswith("/v1/")
        if api:
            added.append(_NO_STORE)
            API_WORK.set(True)

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message["headers"], *added]
            await send(message)

        try:
            refusal = _refusal(scope["headers"])
            if refusal is not None:
                await refusal(scope, receive, send_with_request_id)
            elif api:
                if await _until_disconnect(self.app, scope, receive, send_with_request_id):
                    status = CLIENT_GONE
            else:
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
            REQUEST_ID.reset(bound)


# The access line's status for a request whose client left before its answer (nginx's 499).
CLIENT_GONE = 499


# How long an API request runs before it starts watching for its client leaving: nearly all
# answer sooner and never pay for a watcher task (make bench: a tenth of a lookup's CPU).
WATCH_AFTER_SECONDS = 0.05


async def _until_disconnect(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> bool:
    """Run an API request, cancelled (its database work with it) if the client goes away;
    True if it did.

    Once the request has run ``WATCH_AFTER_SECONDS``, a task reads the client's messages for
    it: body parts are handed to the app as it asks (one at a time, so uvicorn's flow control
    still holds), and a disconnect before the answer is complete cancels the request. Before
    that, the app reads the client itself (a disconnect then reaches it as ``http.disconnect``).
    """
    client = _Client(receive)
    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_SECONDS, client.watch)

    async def send_marking_the_end(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            client.answered = True
        await send(message)

    try:
        await app(scope, client.receive, send_marking_the_end)
    except asyncio.CancelledError:
        if not client.gone:
            raise
        client.task.uncancel()
    finally:
        timer.cancel()
        client.stop()
    return client.gone


class _Client:
    """The client's side of one API request (see ``_until_disconnect``)."""

    __slots__ = ("_parts", "_receive", "_receiving", "_watcher", "answered", "gone", "task")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self._receive = receive
        self._receiving = False
        self._parts: asyncio.Queue[Message] | None = None  # set once a watcher reads for the app
        self._watcher: asyncio.Task[None] | None = None
        self.answered = self.gone = False

    async def receive(self) -> Message:
        if self._parts is not None:
            return await self._parts.get()
        self._receiving = True
        try:
            return await self._receive()
        finally:
            self._receiving = False

    def watch(self) -> None:
        if self.answered or self._watcher is not None:
            return
        loop = asyncio.get_running_loop()
        if self._receiving:  # the app is reading the client itself: look again later
            loop.call_later(WATCH_AFTER_SECONDS, self.watch)
            return
        self._parts = asyncio.Queue(maxsize=1)
        self._watcher = loop.create_task(self._watch(self._parts))

    async def _watch(self, parts: asyncio.Queue[Message]) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                if not self.answered:
                    self.gone = True
                    self.task.cancel()
                return
            await parts.put(message)

    def stop(self) -> None:
        self.answered = True  # a look scheduled for later does nothing
        if self._watcher is not None:
            self._watcher.cancel()


def _refusal(headers: list[tuple[bytes, bytes]]) -> ASGIApp | None:
    """The answer to a request no route may see: too many or too large headers (431), or a
    credential header given twice (400); None for every other request."""
    if len(headers) > MAX_HEADER_COUNT:
        return _error(HEADERS_TOO_LARGE, f"more than {MAX_HEADER_COUNT} headers")
    size = 0
    seen: set[bytes] = set()
    for name, value in headers:
        size += len(name) + len(value) + 4
        if name in _SINGLE_HEADERS:
            if name in seen:
                _SINGLE_HEADERS[name].labels(reason=Refusal.DUPLICATE).inc()
                return _error(DUPLICATE_HEADER, f"{name.decode()} is given more than once")
            seen.add(name)
    if size > MAX_HEADER_BYTES:
        return _error(HEADERS_TOO_LARGE, f"headers larger than {MAX_HEADER_BYTES} bytes")
    return None


def _error(entry: ErrorCode, message: str) -> ASGIApp:
    return error_response(entry.status, entry.code, message, headers={"Connection": "close"})


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
