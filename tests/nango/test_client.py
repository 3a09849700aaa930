"""The real NangoClient against the fake Nango: retries, timeouts, error mapping, secrecy."""

from __future__ import annotations

import logging

import httpx2
import pytest
from pydantic import SecretStr

from app.nango.client import (
    NangoClient,
    NangoNotConfigured,
    NangoRejected,
    NangoUnavailable,
)
from tests.fakes.nango import FakeNango
from tests.nango.clients import client_for

pytestmark = pytest.mark.anyio

SECRET = "test-nango-secret-key"


async def test_connect_session_sends_bearer_and_returns_session(fake_nango: FakeNango) -> None:
    async with client_for(fake_nango) as nango:
        session = await nango.create_connect_session({"tags": {"end_user_id": "u1"}})
    assert session["token"].startswith("nango_connect_session_")
    assert len(session["token"]) == len("nango_connect_session_") + 64
    assert set(session) == {"token", "connect_link", "expires_at"}
    [request] = fake_nango.requests_to("POST", "/connect/sessions")
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.body == {"tags": {"end_user_id": "u1"}}


async def test_5xx_is_retried_then_succeeds(fake_nango: FakeNango) -> None:
    fake_nango.fail_next(2, status=503)
    async with client_for(fake_nango, retries=2) as nango:
        session = await nango.create_connect_session({"tags": {"end_user_id": "u1"}})
    assert session["token"]
    assert len(fake_nango.requests_to("POST", "/connect/sessions")) == 3


async def test_5xx_beyond_retries_is_unavailable(fake_nango: FakeNango) -> None:
    fake_nango.fail_next(5, status=500)
    async with client_for(fake_nango, retries=2) as nango:
        with pytest.raises(NangoUnavailable, match="3 attempt"):
            await nango.list_connections()
    assert len(fake_nango.requests_to("GET", "/connections")) == 3


async def test_4xx_is_never_retried_and_keeps_nangos_code(fake_nango: FakeNango) -> None:
    async with client_for(fake_nango, retries=3) as nango:
        with pytest.raises(NangoRejected) as caught:
            await nango.create_connect_session({"tags": {"end_user_id": "u1"}, "bogus": 1})
    assert caught.value.status == 400
    assert caught.value.code == "invalid_body"
    assert len(fake_nango.requests) == 1


async def test_stalled_answer_times_out_and_is_retried(fake_nango: FakeNango) -> None:
    fake_nango.stall_next(1, seconds=5)
    async with client_for(fake_nango, retries=1, timeout=0.2) as nango:
        connections = await nango.list_connections()
    assert connections == []
    assert len(fake_nango.requests) == 2


async def test_stalls_beyond_retries_are_unavailable(fake_nango: FakeNango) -> None:
    fake_nango.stall_next(3, seconds=5)
    async with client_for(fake_nango, retries=1, timeout=0.1) as nango:
        with pytest.raises(NangoUnavailable, match="TimeoutError"):
            await nango.list_connections()


async def test_network_error_is_retried() -> None:
    calls = 0

    def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx2.ConnectError("refused", request=request)
        return httpx2.Response(200, json={"connections": []})

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http:
        nango = NangoClient(
            http=http, host="http://nango.test", secret_key=SecretStr(SECRET), backoff_seconds=0
        )
        assert await nango.list_connections() == []
    assert calls == 2


async def test_wrong_secret_is_rejected_401(fake_nango: FakeNango) -> None:
    async with client_for(fake_nango, secret="wrong-secret") as nango:
        with pytest.raises(NangoRejected) as caught:
            await nango.list_connections()
    assert caught.value.status == 401


async def test_missing_secret_is_not_configured(fake_nango: FakeNango) -> None:
    async with client_for(fake_nango, secret=None) as nango:
        assert "not configured" in repr(nango)
        with pytest.raises(NangoNotConfigured):
            await nango.list_connections()
    assert fake_nango.requests == []


async def test_listing_pages_newest_first(fake_nango: FakeNango) -> None:
    made = [fake_nango.add_connection(connection_id=f"c{i}") for i in range(5)]
    async with client_for(fake_nango) as nango:
        first = await nango.list_connections(page=0, limit=2)
        second = await nango.list_connections(page=1, limit=2)
        third = await nango.list_connections(page=2, limit=2)
        fourth = await nango.list_connections(page=3, limit=2)
    ids = [c["connection_id"] for c in first + second + third]
    assert ids == [c.connection_id for c in reversed(made)]
    assert fourth == []


async def test_delete_and_unknown_connection(fake_nango: FakeNango) -> None:
    fake_nango.add_connection(connection_id="user/1", integration_id="slack")
    async with client_for(fake_nango) as nango:
        await nango.delete_connection("user/1", "slack")
        with pytest.raises(NangoRejected) as caught:
            await nango.delete_connection("user/1", "slack")
    assert caught.value.code == "unknown_connection"
    assert fake_nango.connections == []


async def test_secret_never_in_errors_logs_or_repr(
    fake_nango: FakeNango, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_nango.fail_next(3, status=500)
    async with client_for(fake_nango, retries=2) as nango:
        assert SECRET not in repr(nango)
        with pytest.raises(NangoUnavailable) as unavailable:
            await nango.list_connections()
        with pytest.raises(NangoRejected) as rejected:
            await nango.create_connect_session({"nope": True})
    logs = caplog.text + capsys.readouterr().err
    for text in (str(unavailable.value), str(rejected.value), logs):
        assert SECRET not in text
    assert "nango_call_failed" in logs
