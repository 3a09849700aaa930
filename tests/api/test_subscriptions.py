"""``/v1/subscriptions`` over HTTP: creation with a secret shown once, changes, attempts."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, SQLModel
from starlette.testclient import TestClient

from app.api.keys import hash_key
from app.db.tables import ApiKeyTable
from app.subscriptions import signing
from tests import secret_scan
from tests.conftest import TEST_SECRET
from tests.rows import add_attempt, add_outbox_delivery

ATTEMPTS = SQLModel.metadata.tables["subscription_attempts"]
DELIVERIES = SQLModel.metadata.tables["subscription_deliveries"]
URL = "https://billing.example/hooks/connections"


@pytest.fixture
def make(make_client: Any) -> Any:
    """The app without a dispatcher (nothing is sent from these tests)."""
    return functools.partial(make_client, subscription_dispatch=False)


@pytest.fixture
def api(make: Any) -> TestClient:
    client: TestClient = make()
    return client


def create(api: TestClient, auth_headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = api.post("/v1/subscriptions", json={"url": URL, **body}, headers=auth_headers)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    secret_scan.register_secret(data["secret"])
    return data


def test_create_shows_the_secret_once_and_stores_none(
    api: TestClient, auth_headers: dict[str, str], sync_engine: Engine
) -> None:
    data = create(
        api,
        auth_headers,
        event_types=["connection.created", "connection.deleted"],
        filters={"end_user_id": "u1", "integration_id": "github"},
    )
    assert data["secret"].startswith("whsec_")
    assert data["url"] == URL
    assert data["event_types"] == ["connection.created", "connection.deleted"]
    assert data["filters"] == {
        "end_user_id": "u1",
        "organization_id": None,
        "integration_id": "github",
    }
    assert data["status"] == "active"
    assert (data["failing_since"], data["disabled_at"]) == (None, None)
    expected = signing.derive_secret(
        TEST_SECRET, subscription_id=data["id"], salt=_salt(sync_engine, data["id"])
    )
    assert data["secret"] == expected
    shown = api.get(f"/v1/subscriptions/{data['id']}", headers=auth_headers).json()["data"]
    assert "secret" not in shown
    assert shown == {k: v for k, v in data.items() if k != "secret"}
    with sync_engine.connect() as conn:
        dump = str(conn.exec_driver_sql("SELECT * FROM subscriptions").all())
    assert data["secret"] not in dump
    assert data["secret"].removeprefix("whsec_") not in dump
    listing = api.get("/v1/subscriptions", headers=auth_headers).json()["data"]
    assert [item["id"] for item in listing] == [data["id"]]


def _salt(engine: Engine, subscription_id: int) -> str:
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            f"SELECT secret_salt FROM subscriptions WHERE id = {int(subscription_id)}"  # noqa: S608
        ).one()
    return str(row[0])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "https://user:pw@example.com/x"}, "url"),
        ({"url": "https:///nohost"}, "url"),
        ({"url": "https://example.com/x#frag"}, "url"),
        ({"url": "https://example.com:99999/x"}, "url"),
        ({"url": "https://exa mple.com/"}, "url"),
        ({"url": URL, "event_types": ["connection.exploded"]}, "event_types.0"),
        ({"url": URL, "event_types": []}, "event_types"),
        ({"url": URL, "filters": {"tag": "x"}}, "filters.tag"),
        ({"url": URL, "secret": "mine"}, "secret"),
        ({}, "url"),
    ],
)
def test_invalid_subscriptions_are_refused_with_400(
    api: TestClient, auth_headers: dict[str, str], body: dict[str, Any], field: str
) -> None:
    response = api.post("/v1/subscriptions", json=body, headers=auth_headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_body"
    assert error["details"]["errors"][0]["field"] == field


def test_https_can_be_required(make: Any, auth_headers: dict[str, str]) -> None:
    api = make(subscription_require_https=True)
    body = {"url": "http://billing.internal/hook"}
    refused = api.post("/v1/subscriptions", json=body, headers=auth_headers)
    assert refused.status_code == 400
    assert "https" in refused.json()["error"]["message"]
    data = create(api, auth_headers)
    patched = api.patch(f"/v1/subscriptions/{data['id']}", json=body, headers=auth_headers)
    assert patched.status_code == 400


@pytest.mark.parametrize("overrides", [{"secret_key": None}, {"secret_key_generated": True}])
def test_creating_needs_a_stable_secret_key(
    make: Any, auth_headers: dict[str, str], overrides: dict[str, Any]
) -> None:
    response = make(**overrides).post("/v1/subscriptions", json={"url": URL}, headers=auth_headers)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "secret_key_missing"


def test_pause_resume_and_change(api: TestClient, auth_headers: dict[str, str]) -> None:
    data = create(api, auth_headers, event_types=["connection.created"])
    path = f"/v1/subscriptions/{data['id']}"
    paused = api.patch(path, json={"status": "paused"}, headers=auth_headers).json()["data"]
    assert paused["status"] == "paused"
    changed = api.patch(
        path,
        json={
            "url": "http://other.example/x",
            "event_types": None,
            "filters": {"organization_id": "o1"},
        },
        headers=auth_headers,
    ).json()["data"]
    assert changed["url"] == "http://other.example/x"
    assert changed["event_types"] is None
    assert changed["filters"] == {
        "end_user_id": None,
        "organization_id": "o1",
        "integration_id": None,
    }
    assert changed["status"] == "paused"
    resumed = api.patch(path, json={"status": "active"}, headers=auth_headers).json()["data"]
    assert resumed["status"] == "active"
    unchanged = api.patch(path, json={}, headers=auth_headers).json()["data"]
    assert unchanged["url"] == "http://other.example/x"
    for body in ({"status": None}, {"url": None}, {"status": "disabled"}, {"filters": None}):
        assert api.patch(path, json=body, headers=auth_headers).status_code == 400


def test_resuming_a_disabled_subscription_clears_its_failures(
    api: TestClient, auth_headers: dict[str, str], sync_engine: Engine
) -> None:
    data = create(api, auth_headers)
    with sync_engine.begin() as conn:
        conn.exec_driver_sql("UPDATE subscriptions SET status = 'disabled'")
        now = datetime.now(UTC)
        table = SQLModel.metadata.tables["subscriptions"]
        conn.execute(table.update().values(failing_since=now, disabled_at=now))
    path = f"/v1/subscriptions/{data['id']}"
    shown = api.get(path, headers=auth_headers).json()["data"]
    assert shown["status"] == "disabled"
    assert shown["disabled_at"] is not None
    resumed = api.patch(path, json={"status": "active"}, headers=auth_headers).json()["data"]
    assert (resumed["status"], resumed["failing_since"], resumed["disabled_at"]) == (
        "active",
        None,
        None,
    )


def test_delete(api: TestClient, auth_headers: dict[str, str]) -> None:
    data = create(api, auth_headers)
    path = f"/v1/subscriptions/{data['id']}"
    deleted = api.delete(path, headers=auth_headers)
    assert deleted.status_code == 200
    assert deleted.json()["data"]["id"] == data["id"]
    assert api.delete(path, headers=auth_headers).status_code == 404
    assert api.get(path, headers=auth_headers).status_code == 404


@pytest.mark.parametrize("raw", ["0", "abc", "99999999999999999999", "12", "-1", "\u0661"])
def test_unknown_ids_are_404(api: TestClient, auth_headers: dict[str, str], raw: str) -> None:
    for method, suffix in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/attempts")):
        body: dict[str, Any] | None = {} if method == "PATCH" else None
        response = api.request(
            method, f"/v1/subscriptions/{raw}{suffix}", json=body, headers=auth_headers
        )
        assert response.status_code == 404, (method, raw)
        assert response.json()["error"]["code"] == "subscription_not_found"
    replay = api.post(f"/v1/subscriptions/{raw}/replay", json={"after": 0}, headers=auth_headers)
    assert replay.status_code == 404


def test_every_route_needs_a_full_access_key(
    api: TestClient, auth_headers: dict[str, str], sync_engine: Engine
) -> None:
    with Session(sync_engine) as session:
        session.add(ApiKeyTable(name="ro", key_hash=hash_key("read-only-key"), read_only=True))
        session.commit()
    data = create(api, auth_headers)
    read_only = {"Authorization": "Bearer read-only-key"}
    for method, path in (
        ("GET", "/v1/subscriptions"),
        ("POST", "/v1/subscriptions"),
        ("GET", f"/v1/subscriptions/{data['id']}"),
        ("GET", f"/v1/subscriptions/{data['id']}/attempts"),
        ("POST", f"/v1/subscriptions/{data['id']}/replay"),
    ):
        assert api.request(method, path, headers=read_only).status_code == 403
        assert api.request(method, path).status_code == 401


def add_attempts(engine: Engine, subscription_id: int, count: int) -> None:
    """``count`` tries of event 9: failures, then a success."""
    delivery = add_outbox_delivery(engine, subscription_id, 9, 1, tries=count)
    for n in range(1, count + 1):
        last = n == count
        add_attempt(
            engine,
            delivery,
            try_number=n,
            outcome="succeeded" if last else "failed",
            status_code=200 if last else 500,
            response_body="oops",
        )


def test_attempts_are_listed_newest_first_in_pages(
    api: TestClient, auth_headers: dict[str, str], sync_engine: Engine
) -> None:
    data = create(api, auth_headers)
    other = create(api, auth_headers)
    add_attempts(sync_engine, data["id"], 5)
    add_attempts(sync_engine, other["id"], 1)
    path = f"/v1/subscriptions/{data['id']}/attempts"
    first = api.get(path, params={"limit": 3}, headers=auth_headers).json()
    assert [item["try_number"] for item in first["data"]] == [5, 4, 3]
    newest = first["data"][0]
    assert newest["outcome"] == "succeeded"
    assert newest["status_code"] == 200
    assert newest["webhook_id"] == f"msg_{data['id']}_9"
    assert newest["response_body"] == "oops"
    second = api.get(
        path, params={"limit": 3, "cursor": first["next_cursor"]}, headers=auth_headers
    ).json()
    assert [item["try_number"] for item in second["data"]] == [2, 1]
    assert second["next_cursor"] is None
    elsewhere = f"/v1/subscriptions/{other['id']}/attempts"
    reused = api.get(elsewhere, params={"cursor": first["next_cursor"]}, headers=auth_headers)
    assert reused.status_code == 400


def test_replay_validates_its_body(api: TestClient, auth_headers: dict[str, str]) -> None:
    data = create(api, auth_headers)
    path = f"/v1/subscriptions/{data['id']}/replay"
    for body in ({}, {"after": -1}, {"after": "1"}, {"after": 0, "limit": 0}, {"after": True}):
        assert api.post(path, json=body, headers=auth_headers).status_code == 400
