"""API keys record their last use: at most once a minute per key, after the answer."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.api import keys
from tests.api.test_auth import add_key, bearer


def _last_used(engine: Engine, name: str) -> datetime | None:
    with engine.connect() as conn:
        value: datetime | None = conn.execute(
            text("SELECT last_used_at FROM api_keys WHERE name = :name"), {"name": name}
        ).scalar_one()
    return value


def _wait_for_use(engine: Engine, name: str, *, after: datetime | None = None) -> datetime:
    deadline = time.monotonic() + 3
    while True:
        used = _last_used(engine, name)
        if used is not None and (after is None or used > after):
            return used
        assert time.monotonic() < deadline, "the key's use was never recorded"
        time.sleep(0.02)


def test_last_use_is_recorded_at_most_once_a_minute(
    client: TestClient, sync_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_key(sync_engine, "billing", "db-key-used")
    add_key(sync_engine, "idle", "db-key-idle")
    assert client.get("/v1/connections", headers=bearer("db-key-used")).is_success
    first = _wait_for_use(sync_engine, "billing")
    for _ in range(5):
        assert client.get("/v1/connections", headers=bearer("db-key-used")).is_success
    time.sleep(0.2)
    assert _last_used(sync_engine, "billing") == first
    assert _last_used(sync_engine, "idle") is None

    # A minute later (made zero here) the next use is written again.
    monkeypatch.setattr(keys, "LAST_USED_SECONDS", 0.0)
    assert client.get("/v1/connections", headers=bearer("db-key-used")).is_success
    assert _wait_for_use(sync_engine, "billing", after=first) > first


def test_a_failed_write_of_the_last_use_fails_no_request(
    client: TestClient, sync_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache: Any = client.app.state.registry.api_keys  # type: ignore[attr-defined]
    failures: list[int] = []

    class Broken:
        def transaction(self) -> Any:
            failures.append(1)
            raise RuntimeError("database gone")

        def reader(self) -> Any:
            return real.reader()

    real = cache._database
    monkeypatch.setattr(cache, "_database", Broken())
    add_key(sync_engine, "billing", "db-key-broken")
    assert client.get("/v1/connections", headers=bearer("db-key-broken")).is_success
    deadline = time.monotonic() + 2
    while not failures:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert _last_used(sync_engine, "billing") is None
    # Not remembered as written: the next use tries again.
    monkeypatch.setattr(cache, "_database", real)
    assert client.get("/v1/connections", headers=bearer("db-key-broken")).is_success
    _wait_for_use(sync_engine, "billing")


def test_uses_noted_before_shutdown_are_written(make_settings: Any, sync_engine: Engine) -> None:
    from app.application import create_app

    add_key(sync_engine, "billing", "db-key-shutdown")
    with TestClient(create_app(make_settings())) as client:
        cache: Any = client.app.state.registry.api_keys  # type: ignore[attr-defined]
        gate = asyncio.Event()
        write = cache._write_uses

        async def slow() -> None:
            await gate.wait()
            await write()

        cache._write_uses = slow
        assert client.get("/v1/connections", headers=bearer("db-key-shutdown")).is_success
        assert _last_used(sync_engine, "billing") is None
        client.portal.call(gate.set)  # type: ignore[union-attr]
    assert _last_used(sync_engine, "billing") is not None
