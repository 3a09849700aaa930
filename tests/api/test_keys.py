"""API keys: authentication, the key cache, and the record of each key's last use."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from app.api import keys
from app.api.keys import REFRESH_SECONDS, hash_key, require_api_key
from app.application import create_app
from app.db.tables import ApiKeyTable
from app.settings import Settings
from tests.conftest import TEST_API_KEY

V1_ROUTES = [
    "/v1/connections",
    "/v1/connections/some-id",
    "/v1/connections/some-id/events",
    "/v1/end-users/some-user/summary",
]


async def _write_route(request: Request) -> JSONResponse:
    principal = await require_api_key(request, write=True)
    return JSONResponse({"changed_by": principal.name})


@pytest.fixture
def app_client(settings: Settings) -> Iterator[TestClient]:
    """The app plus one state-changing route, to see read-only keys refused writes."""
    app = create_app(settings)
    app.router.routes.append(Route("/v1/test-write", _write_route, methods=["POST"]))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def add_key(engine: Engine, name: str, secret: str, **fields: Any) -> None:
    with Session(engine) as session:
        session.add(ApiKeyTable(name=name, key_hash=hash_key(secret), **fields))
        session.commit()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize("path", V1_ROUTES)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {TEST_API_KEY}"},
        {"Authorization": TEST_API_KEY},
        {"X-API-Key": TEST_API_KEY},
    ],
)
def test_v1_routes_refuse_missing_or_wrong_keys(
    client: TestClient, path: str, headers: dict[str, str]
) -> None:
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"
    assert TEST_API_KEY not in response.text


@pytest.mark.parametrize("name", ["api_key", "key", "access_token", "token", "authorization"])
def test_a_key_in_the_query_string_is_never_accepted(client: TestClient, name: str) -> None:
    response = client.get("/v1/connections", params={name: TEST_API_KEY})
    assert response.status_code == 401


def test_database_keys_work_until_revoked(
    app_client: TestClient, sync_engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.logs import configure_logging

    add_key(sync_engine, "billing-service", "db-key-secret-1")
    configure_logging("info")
    try:
        assert app_client.get("/v1/connections", headers=bearer("db-key-secret-1")).is_success
        assert app_client.post("/v1/test-write", headers=bearer("db-key-secret-1")).json() == {
            "changed_by": "billing-service"
        }
        output = capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["event"] == "request"]
    assert {line["api_key"] for line in access} == {"billing-service"}
    assert "db-key-secret-1" not in output

    with sync_engine.begin() as conn:
        conn.execute(
            ApiKeyTable.__table__.update()  # type: ignore[attr-defined]
            .where(ApiKeyTable.__table__.c.name == "billing-service")  # type: ignore[attr-defined]
            .values(revoked_at=datetime.now(UTC))
        )
    # Keys are held in memory and reloaded every few seconds: the revocation takes effect
    # within REFRESH_SECONDS (the README promises 5 s), not necessarily on the next request.
    started = time.monotonic()
    while app_client.get("/v1/connections", headers=bearer("db-key-secret-1")).is_success:
        assert time.monotonic() - started < REFRESH_SECONDS + 0.5, "the revocation never applied"
        time.sleep(0.1)
    assert time.monotonic() - started <= 5.0
    revoked = app_client.get("/v1/connections", headers=bearer("db-key-secret-1"))
    assert revoked.status_code == 401


def test_database_keys_cost_no_query_per_request(
    app_client: TestClient, sync_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache: Any = app_client.app.state.registry.api_keys  # type: ignore[attr-defined]
    loads: list[float] = []
    load = cache._load

    async def counted() -> None:
        loads.append(time.monotonic())
        await load()

    monkeypatch.setattr(cache, "_load", counted)
    add_key(sync_engine, "new-service", "db-key-secret-2")
    # A key created a moment ago works on its first request (a miss reloads at once)...
    assert app_client.get("/v1/connections", headers=bearer("db-key-secret-2")).is_success
    assert len(loads) == 1
    # ...and then costs no query at all.
    for _ in range(30):
        assert app_client.get("/v1/connections", headers=bearer("db-key-secret-2")).is_success
    assert len(loads) == 1
    # A stream of wrong keys costs at most one reload a second, not one each.
    for _ in range(30):
        assert app_client.get("/v1/connections", headers=bearer("wrong")).status_code == 401
    assert len(loads) <= 2


def test_read_only_keys_read_but_may_not_write(
    app_client: TestClient, sync_engine: Engine, auth_headers: dict[str, str]
) -> None:
    add_key(sync_engine, "dashboard", "read-only-secret", read_only=True)
    for path in V1_ROUTES:
        response = app_client.get(path, headers=bearer("read-only-secret"))
        assert response.status_code in {200, 404}, path
    refused = app_client.post("/v1/test-write", headers=bearer("read-only-secret"))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert app_client.post("/v1/test-write", headers=auth_headers).json() == {"changed_by": "env:1"}


def test_every_configured_env_key_works(make_settings: Any) -> None:
    settings = make_settings(registry_api_keys="old-key, new-key")
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/connections", headers=bearer("old-key")).status_code == 200
        assert client.get("/v1/connections", headers=bearer("new-key")).status_code == 200
        assert client.get("/v1/connections", headers=bearer("other")).status_code == 401


def test_health_and_openapi_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").status_code == 200


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
