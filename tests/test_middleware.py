"""The request middleware, driven as uvicorn drives it: a client that leaves mid-request."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest

from app import middleware
from app.middleware import CLIENT_GONE, RequestContextMiddleware

Message = MutableMapping[str, Any]


def _scope(path: str) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}


def test_an_api_request_whose_client_leaves_is_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    cancelled = asyncio.Event()
    statuses: list[int] = []
    sent: list[Message] = []

    def observed(*, scope: Any, status: int, seconds: float) -> None:
        statuses.append(status)

    monkeypatch.setattr(middleware, "observe_request", observed)

    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "http.request"
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def send(message: Message) -> None:
        sent.append(message)

    async def scenario() -> None:
        messages: asyncio.Queue[Message] = asyncio.Queue()
        await messages.put({"type": "http.request", "body": b"", "more_body": False})
        request = asyncio.create_task(
            RequestContextMiddleware(slow_app)(_scope("/v1/connections"), messages.get, send)
        )
        await asyncio.sleep(0.1)
        await messages.put({"type": "http.disconnect"})
        async with asyncio.timeout(2):
            await request

    asyncio.run(scenario())
    assert cancelled.is_set()
    assert statuses == [CLIENT_GONE]
    assert not sent  # nobody is left to answer


def test_a_disconnect_after_the_answer_cancels_nothing() -> None:
    sent: list[Message] = []

    async def quick_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        await asyncio.sleep(0.05)  # the client has its answer and leaves meanwhile

    async def send(message: Message) -> None:
        sent.append(message)

    async def scenario() -> None:
        messages: asyncio.Queue[Message] = asyncio.Queue()
        await messages.put({"type": "http.disconnect"})
        await RequestContextMiddleware(quick_app)(_scope("/v1/connections"), messages.get, send)

    asyncio.run(scenario())
    assert sent[0]["status"] == 200
    headers = dict(sent[0]["headers"])
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"x-content-type-options"] == b"nosniff"


def test_every_line_logged_during_a_request_carries_its_id_and_none_after(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json
    import logging

    from app.logs import configure_logging, get_logger

    configure_logging("info")  # on (the current) standard error, as the service logs
    log = get_logger("tests.handler")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        log.info("inside")  # structlog
        logging.getLogger("tests.stdlib").warning("also inside")  # a library's logger
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Message) -> None:
        pass

    async def scenario() -> None:
        scope = _scope("/healthz")
        scope["headers"] = [(b"x-request-id", b"the-request")]
        await RequestContextMiddleware(app)(scope, _no_body, send)
        log.info("after")

    try:
        asyncio.run(scenario())
        err = capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
    lines = {line["event"]: line for line in map(json.loads, err.splitlines()) if line}
    assert lines["inside"]["request_id"] == "the-request"
    assert lines["also inside"]["request_id"] == "the-request"
    assert lines["request"]["request_id"] == "the-request"
    assert "request_id" not in lines["after"]


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
