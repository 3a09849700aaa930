"""The client and Nango's rate limit: a 429 is waited out, within bounds, and never final early."""

from __future__ import annotations

import time

import anyio
import pytest

from app.nango.client import NangoRateLimited, NangoUnavailable
from tests.fakes.nango import FakeNango
from tests.nango.clients import client_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait the client asks for, recorded instead of slept."""
    asked: list[float] = []

    async def record(seconds: float) -> None:
        asked.append(seconds)

    monkeypatch.setattr(anyio, "sleep", record)
    return asked


async def test_a_burst_of_429s_is_waited_out(fake_nango: FakeNango) -> None:
    fake_nango.add_connection(connection_id="c1")
    fake_nango.limiter.refuse_next(4, retry_after=0)
    async with client_for(fake_nango, retries=0) as nango:  # 429s are not 5xx retries
        [listed] = await nango.list_connections()
    assert listed["connection_id"] == "c1"
    assert len(fake_nango.requests_to("GET", "/connections")) == 5


async def test_the_wait_is_what_retry_after_says_plus_a_margin_and_bounded(
    fake_nango: FakeNango, sleeps: list[float]
) -> None:
    fake_nango.limiter.refuse_next(1, retry_after=2)
    fake_nango.limiter.refuse_next(1, retry_after=600)
    async with client_for(
        fake_nango,
        rate_limit_margin_seconds=1.0,
        rate_limit_max_wait_seconds=60.0,
        rate_limit_deadline_seconds=120.0,
    ) as nango:
        assert await nango.list_connections() == []
    assert sleeps == [3.0, 60.0]


async def test_a_wait_past_the_deadline_is_not_started(
    fake_nango: FakeNango, sleeps: list[float]
) -> None:
    fake_nango.limiter.refuse_next(1, retry_after=30)
    async with client_for(
        fake_nango, rate_limit_max_wait_seconds=60.0, rate_limit_deadline_seconds=20.0
    ) as nango:
        with pytest.raises(NangoRateLimited) as caught:
            await nango.list_connections()
    assert (caught.value.status, caught.value.code) == (429, "too_many_request")
    assert caught.value.retry_after == 30.0
    assert "Retry" not in str(caught.value)
    assert sleeps == []
    assert len(fake_nango.requests) == 1


async def test_still_429_at_the_deadline_is_rate_limited_unless_patient(
    fake_nango: FakeNango,
) -> None:
    fake_nango.limiter.refuse_next(12, retry_after=0)
    async with client_for(
        fake_nango, rate_limit_margin_seconds=0.05, rate_limit_deadline_seconds=0.2
    ) as nango:
        with pytest.raises(NangoRateLimited):
            await nango.list_connections()
        tried = len(fake_nango.requests)
        # Background work may wait longer: the same client, patient.
        assert await nango.patient(10.0).list_connections() == []
    assert 3 <= tried <= 6
    assert len(fake_nango.requests) == 13


async def test_429_and_5xx_have_their_own_budgets(fake_nango: FakeNango) -> None:
    fake_nango.fail_next(1, status=503)
    fake_nango.limiter.refuse_next(3)
    fake_nango.fail_next(1, status=502)
    async with client_for(fake_nango, retries=1) as nango:
        with pytest.raises(NangoUnavailable, match="2 attempt"):
            await nango.list_connections()


async def test_rate_limit_headers_are_remembered(fake_nango: FakeNango) -> None:
    fake_nango.limiter.per_window(5, window=60)
    async with client_for(fake_nango) as nango:
        assert nango.rate_limit is None
        await nango.list_connections()
        await nango.patient(60).list_connections()  # one account, one limit
        quota = nango.rate_limit
    assert quota is not None
    assert (quota.limit, quota.remaining) == (5, 3)
    assert 0 < quota.resets_at - time.monotonic() <= 60 + 0.01
