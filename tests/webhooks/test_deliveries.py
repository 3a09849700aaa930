"""Reading the inbox: filters, keyset pages in both orders, one delivery, the failed count."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine

from app.db.database import Database, connected
from app.settings import Settings
from app.webhooks.deliveries import (
    DeliveryDetail,
    DeliveryFilter,
    count_failed,
    get_delivery,
    list_deliveries,
)
from app.webhooks.model import DeliveryOutcome
from tests.rows import add_delivery

T = TypeVar("T")
START = datetime(2026, 11, 1, tzinfo=UTC)


def run(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    async def main() -> T:
        async with connected(settings) as database:
            return await work(database)

    return asyncio.run(main())


@pytest.fixture
def stored(sync_engine: Engine) -> list[int]:
    """Six deliveries a minute apart: two failed, a sync, one for another connection."""
    rows: list[dict[str, Any]] = [
        {},
        {"outcome": "failed", "error": "KeyError: 'tags'"},
        {"webhook_type": "sync", "operation": None, "outcome": "recorded"},
        {"connection_id": "conn-2", "operation": "refresh", "success": False},
        {"outcome": "failed", "error": "ValueError: x", "connection_id": "conn-2"},
        {"webhook_type": "forward", "operation": None, "outcome": "recorded"},
    ]
    return [
        add_delivery(sync_engine, received_at=START + timedelta(minutes=i), **row)
        for i, row in enumerate(rows)
    ]


def ids(settings: Settings, **options: Any) -> list[int]:
    page = run(settings, lambda db: list_deliveries(db, **options))
    return [delivery.id for delivery in page.deliveries]


def test_newest_first_without_filters(settings: Settings, stored: list[int]) -> None:
    assert ids(settings) == stored[::-1]


def test_each_filter_narrows(settings: Settings, stored: list[int]) -> None:
    def only(**filters: Any) -> list[int]:
        return ids(settings, filters=DeliveryFilter(**filters), order="oldest")

    assert only(outcome=DeliveryOutcome.FAILED) == [stored[1], stored[4]]
    assert only(outcome="failed", connection_id="conn-2") == [stored[4]]
    assert only(webhook_type="sync") == [stored[2]]
    assert only(integration_id="github", environment="prod") == stored
    assert only(environment="dev") == []
    window = {
        "received_from": START + timedelta(minutes=2),
        "received_before": START + timedelta(minutes=4),
    }
    assert only(**window) == [stored[2], stored[3]]


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_pages_continue_after_the_cursor(
    settings: Settings, stored: list[int], order: Any, sync_engine: Engine
) -> None:
    expected = stored[::-1] if order == "newest" else stored
    seen: list[int] = []
    cursor = None
    for _ in range(4):
        page = run(settings, partial(list_deliveries, limit=4, after=cursor, order=order))
        seen += [delivery.id for delivery in page.deliveries]
        cursor = page.next_cursor
        if cursor is None:
            break
        # A delivery stored between pages changes nothing in the pages still to read
        # (newest first), or comes at the end (oldest first).
        add_delivery(sync_engine, received_at=START)
    assert seen[: len(expected)] == expected
    assert cursor is None


def test_limit_is_bounded(settings: Settings) -> None:
    with pytest.raises(ValueError, match="limit"):
        run(settings, lambda db: list_deliveries(db, limit=0))


def test_one_delivery_with_body_headers_and_error(settings: Settings, stored: list[int]) -> None:
    detail = run(settings, lambda db: get_delivery(db, delivery_id=stored[1]))
    assert isinstance(detail, DeliveryDetail)
    assert (detail.outcome, detail.error) == ("failed", "KeyError: 'tags'")
    assert (detail.body, detail.headers) == (
        '{"type":"auth"}',
        {"content-type": "application/json"},
    )
    assert detail.received_at == START + timedelta(minutes=1)
    assert run(settings, lambda db: get_delivery(db, delivery_id=10**9)) is None


def test_failed_count(settings: Settings, stored: list[int]) -> None:
    assert run(settings, count_failed) == 2
