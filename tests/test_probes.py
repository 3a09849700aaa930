from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.application import create_app
from app.db import migrate


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_the_schema_revision(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "schema_revision": migrate.head_revision()}


def test_readyz_is_503_when_the_database_is_unreachable(make_settings: Any) -> None:
    settings = make_settings(database_url="postgresql://nobody@127.0.0.1:1/none")
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["reason"] == "cannot reach Postgres at 127.0.0.1:1: Connection refused"


def test_readyz_is_503_when_migrations_are_behind(client: TestClient, sync_engine: Engine) -> None:
    with sync_engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'stale'"))
    try:
        response = client.get("/readyz")
    finally:
        with sync_engine.begin() as conn:
            conn.execute(
                text("UPDATE alembic_version SET version_num = :head"),
                {"head": migrate.head_revision()},
            )
    assert response.status_code == 503
    assert response.json()["reason"] == (
        f"the database schema is at revision stale, this version needs {migrate.head_revision()}:"
        " run nango-registry migrate"
    )


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "req-123"})
    assert given.headers["X-Request-ID"] == "req-123"
    generated = client.get("/healthz")
    assert len(generated.headers["X-Request-ID"]) == 32
    hostile = client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert hostile.headers["X-Request-ID"] != "x" * 500


def test_unknown_route_and_wrong_method_use_the_json_error_shape(client: TestClient) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = client.post("/healthz")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


def test_one_json_access_log_line_per_request(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.logs import configure_logging

    configure_logging("info")
    try:
        client.get("/healthz", headers={"X-Request-ID": "log-me"})
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    finally:
        logging.getLogger().handlers.clear()
    access = [line for line in lines if line.get("event") == "request"]
    assert len(access) == 1
    assert access[0]["method"] == "GET"
    assert access[0]["path"] == "/healthz"
    assert access[0]["status"] == 200
    assert access[0]["request_id"] == "log-me"
    assert isinstance(access[0]["duration_ms"], float)
