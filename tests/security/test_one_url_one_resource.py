"""Issue 13, point 4: one URL names one resource.

Legacy IDs may contain "/". A "/" inside an ID is sent as %2F; a raw "/" always separates
segments. Connections named like the routes under another connection ("X/events",
"X/reconnect-session") are reached by every method, and never confused with X's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from starlette.testclient import TestClient

from tests.fakes.nango import FakeNango
from tests.rows import add_connection, connection_row
from tests.security.attacker import BEARER, serve

TRICKY = ("X/events", "X/reconnect-session", "X/events/reconnect-session")


def _arrange(engine: Engine) -> None:
    add_connection(engine, connection_id="X", end_user_id="owner-x")
    for name in TRICKY:
        add_connection(
            engine, connection_id=name, end_user_id="team/alice", tags={"end_user_id": "team/alice"}
        )


def test_ids_named_like_routes_over_a_real_server(
    tmp_path: Path, database_url: str, sync_engine: Engine
) -> None:
    _arrange(sync_engine)
    with serve(tmp_path, database_url) as server:
        for name in TRICKY:
            encoded = name.replace("/", "%2F")
            item = server.request("GET", f"/v1/connections/{encoded}", BEARER)
            assert item.status == 200, (name, item)
            assert item.json()["data"]["connection_id"] == name
            history = server.request("GET", f"/v1/connections/{encoded}/events", BEARER)
            assert history.status == 200
        # A raw "/" is a separator: X's history, never the connection "X/events".
        own = server.request("GET", "/v1/connections/X/events", BEARER)
        assert own.status == 200
        assert isinstance(own.json()["data"], list)  # a history page, not a connection
        # %252F is "%2F" itself, not a "/".
        literal = server.request("GET", "/v1/connections/X%252Fevents", BEARER)
        assert literal.status == 404
        summary = server.request("GET", "/v1/end-users/team%2Falice/summary", BEARER)
        assert summary.status == 200
        data = summary.json()["data"]
        assert data["end_user_id"] == "team/alice"
        assert data["integrations"], data
        assert server.request("GET", "/v1/end-users/team/alice/summary", BEARER).status == 404


def test_every_method_reaches_the_connection_it_names(
    make_client: Any, auth_headers: dict[str, str], fake_nango: FakeNango, sync_engine: Engine
) -> None:
    _arrange(sync_engine)
    for name in TRICKY:
        fake_nango.add_connection(connection_id=name, integration_id="github")
    api: TestClient = make_client()

    session = api.post(
        "/v1/connections/X%2Freconnect-session/reconnect-session", headers=auth_headers
    )
    assert session.status_code == 201, session.text
    sent = fake_nango.requests_to("POST", "/connect/sessions/reconnect")[-1]
    assert sent.body["connection_id"] == "X/reconnect-session"
    # POST to the connection's own URL is not a reconnect of "X".
    assert (
        api.post("/v1/connections/X%2Freconnect-session", headers=auth_headers).status_code == 405
    )

    deleted = api.delete("/v1/connections/X%2Fevents", headers=auth_headers)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["data"]["connection_id"] == "X/events"
    assert connection_row(sync_engine, "X/events").status == "deleted"
    assert connection_row(sync_engine, "X").status == "active"
    # DELETE of X's history URL deletes nothing.
    assert api.delete("/v1/connections/X/events", headers=auth_headers).status_code == 405
    assert connection_row(sync_engine, "X").status == "active"
