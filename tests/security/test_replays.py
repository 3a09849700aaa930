"""Issue 13, point 10: replays of captured bodies.

Nango signs no timestamp, so whoever captured a signed body can send it again once the dedupe
window has passed (here: the stored deliveries are aged past it). A replay may be stored, but
it never resurrects a deleted connection and never gives a connection back to an earlier owner.
"""

from __future__ import annotations

from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from tests.rows import connection_row
from tests.webhooks.helpers import auth_body, signed_headers


def _send(client: TestClient, body: bytes) -> str:
    answer = client.post("/webhooks/nango", content=body, headers=signed_headers(body))
    assert answer.status_code == 200, answer.text
    status: str = answer.json()["status"]
    return status


def _age_deliveries(engine: Engine) -> None:
    """Every stored delivery a day older: past any dedupe window."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("UPDATE deliveries SET received_at = received_at - interval '1 day'"))
        else:
            conn.execute(
                text(
                    "UPDATE deliveries SET received_at ="
                    " strftime('%Y-%m-%d %H:%M:%f000', received_at, '-1 day')"
                )
            )


def test_a_replayed_body_resurrects_nothing_and_gives_nothing_back(
    client: TestClient, sync_engine: Engine
) -> None:
    created = auth_body(
        connection_id="victim", tags={"end_user_id": "alice", "organization_id": "acme"}
    )
    moved = auth_body(
        connection_id="victim",
        operation="override",
        tags={"end_user_id": "bob", "organization_id": "bobco"},
    )
    assert _send(client, created) == "applied"
    assert _send(client, moved) == "applied"
    assert connection_row(sync_engine, "victim").end_user_id == "bob"

    _age_deliveries(sync_engine)
    assert _send(client, created) != "duplicate"  # past the window: stored again...
    row = connection_row(sync_engine, "victim")
    assert (row.end_user_id, row.organization_id) == ("bob", "bobco")  # ...but bob keeps it
    assert row.tags["end_user_id"] == "bob"
    assert row.status == "active"

    assert _send(client, auth_body(connection_id="victim", operation="deletion")) == "applied"
    deleted_at = connection_row(sync_engine, "victim").deleted_at
    _age_deliveries(sync_engine)
    for body in (created, moved):
        _send(client, body)
        row = connection_row(sync_engine, "victim")
        assert row.status == "deleted"
        assert row.deleted_at == deleted_at
        assert row.end_user_id == "bob"
