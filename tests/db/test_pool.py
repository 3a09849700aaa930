"""The connection pool: sized from settings, and it survives a database restart."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.application import create_app
from app.db.database import PostgresDatabase
from app.state import AppState


def _postgres(client: TestClient) -> PostgresDatabase:
    database = _registry_state(client).database
    assert isinstance(database, PostgresDatabase)
    return database


def _registry_state(client: TestClient) -> AppState:
    app: Any = client.app
    state: AppState = app.state.registry
    return state


def test_pool_is_sized_from_settings(make_settings: Any, sync_engine: Engine) -> None:
    if sync_engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no connection pool to size")
    settings = make_settings(database_pool_size=3, database_max_overflow=1)
    with TestClient(create_app(settings)) as client:
        pool: Any = _postgres(client).pool
        assert (pool.min_size, pool.max_size) == (3, 4)
        assert client.get("/readyz").status_code == 200


def test_killed_connections_are_replaced_without_a_restart(
    client: TestClient, sync_engine: Engine
) -> None:
    if sync_engine.dialect.name != "postgresql":
        pytest.skip("only a server database can drop connections under the app")
    # Fill the pool with a few idle connections, as a running service has.
    for _ in range(3):
        assert client.get("/readyz").status_code == 200
    pool: Any = _postgres(client).pool
    idle = pool.get_stats()["pool_available"]
    assert idle >= 1

    # What a failover or `heroku pg:killall` does: every other session on the database dies.
    with sync_engine.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    assert killed >= idle

    # The pool's check on checkout notices the dead sockets and reconnects: no request fails.
    for _ in range(5):
        response = client.get("/readyz")
        assert response.status_code == 200, response.text
