"""The console's actions: read-only mode, and each action doing what the API or CLI does."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from tests.console.conftest import csrf_token, deliver, post_form
from tests.console.test_csrf import ACTIONS
from tests.fakes.nango import FakeNango
from tests.rows import add_connection, connection_row


def _pk(engine: Engine, connection_id: str) -> int:
    return int(connection_row(engine, connection_id).id)


@pytest.mark.parametrize(("path", "data"), ACTIONS)
def test_read_only_refuses_every_action(make_console: Any, path: str, data: dict[str, str]) -> None:
    writer: TestClient = make_console()
    token = csrf_token(writer)
    reader: TestClient = make_console(console_read_only=True)
    response = post_form(reader, path, data, token=token)
    assert response.status_code == 403
    assert "console_read_only" in response.text


def test_read_only_hides_every_action(make_console: Any, sync_engine: Engine) -> None:
    reader: TestClient = make_console(console_read_only=True)
    deliver(reader, connection_id="conn-1", tags={"end_user_id": "u1"})
    pages = [
        "/console/",
        "/console/connections",
        f"/console/connections/{_pk(sync_engine, 'conn-1')}",
        "/console/reconcile",
        "/console/api-keys",
    ]
    for path in pages:
        body = reader.get(path).text
        assert 'method="post"' not in body, path
        assert "csrf_token" not in body, path
        assert "read-only" in body


def test_delete_deletes_at_nango_then_here(
    console: TestClient, fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="conn-1", tags={"end_user_id": "u1"})
    deliver(console, connection_id="conn-1", tags={"end_user_id": "u1"})
    pk = _pk(sync_engine, "conn-1")
    response = post_form(console, f"/console/connections/{pk}/delete", {"confirm": "yes"})
    assert response.status_code == 303
    assert response.headers["location"] == f"/console/connections/{pk}?notice=deleted"
    assert connection_row(sync_engine, "conn-1").status == "deleted"
    assert fake_nango.find("conn-1") is None
    page = console.get(response.headers["location"]).text
    assert "The connection is deleted" in page
    assert "deletion" in page
    assert "Create a reconnect link" not in page


def test_delete_failing_at_nango_is_a_502_page(
    console: TestClient, fake_nango: FakeNango, sync_engine: Engine
) -> None:
    deliver(console, connection_id="conn-1", tags={"end_user_id": "u1"})
    fake_nango.fail_next(10)
    response = post_form(
        console, f"/console/connections/{_pk(sync_engine, 'conn-1')}/delete", {"confirm": "yes"}
    )
    assert response.status_code == 502
    assert "<h1>Error 502</h1>" in response.text
    assert connection_row(sync_engine, "conn-1").status == "active"


def test_reconnect_shows_the_connect_link(
    console: TestClient, fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="conn-1", tags={"end_user_id": "u1"})
    deliver(console, connection_id="conn-1", tags={"end_user_id": "u1"})
    response = post_form(console, f"/console/connections/{_pk(sync_engine, 'conn-1')}/reconnect")
    assert response.status_code == 200
    [sent] = fake_nango.requests_to("POST", "/connect/sessions/reconnect")
    assert sent.body["tags"]["end_user_id"] == "u1"
    assert re.search(r'data-copy="https://[^"]+"', response.text)


def test_reconnect_of_an_unattributed_connection_is_409(
    console: TestClient, sync_engine: Engine
) -> None:
    add_connection(sync_engine, connection_id="nobody")
    response = post_form(console, f"/console/connections/{_pk(sync_engine, 'nobody')}/reconnect")
    assert response.status_code == 409
    assert "unattributed" in response.text


def test_actions_on_an_unknown_connection_are_404(console: TestClient) -> None:
    for verb in ("delete", "reconnect"):
        response = post_form(console, f"/console/connections/424242/{verb}", {"confirm": "yes"})
        assert response.status_code == 404
        assert "<code>connection_not_found</code>" in response.text


def test_reconcile_now_runs_against_nango(
    console: TestClient, fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="from-nango", tags={"end_user_id": "u9"})
    response = post_form(console, "/console/reconcile")
    assert response.status_code == 303
    assert response.headers["location"] == "/console/reconcile?notice=reconciled"
    assert connection_row(sync_engine, "from-nango").end_user_id == "u9"
    page = console.get(response.headers["location"]).text
    assert "Reconciliation finished" in page
    assert "<td>console</td>" in page  # the run's trigger
    assert "created 1" in page


def test_reconcile_while_one_runs_is_409(console: TestClient, sync_engine: Engine) -> None:
    with sync_engine.begin() as conn:
        conn.execute(
            text("INSERT INTO leases (name, holder, expires_at) VALUES ('reconcile', 'other', :t)"),
            {"t": "2999-01-01 00:00:00+00:00"},
        )
    response = post_form(console, "/console/reconcile")
    assert response.status_code == 409
    assert "reconcile_running" in response.text


def test_create_shows_the_key_once_and_it_works(console: TestClient) -> None:
    response = post_form(console, "/console/api-keys", {"name": "billing", "read_only": "on"})
    assert response.status_code == 201
    match = re.search(r'data-copy="(nreg_[^"]+)"', response.text)
    assert match is not None
    key = match.group(1)
    lookup = console.get("/v1/connections", headers={"Authorization": f"Bearer {key}"}, auth=None)
    assert lookup.status_code == 200
    listing = console.get("/console/api-keys").text
    assert "billing" in listing
    assert key not in listing
    assert "read-only" in listing


def test_create_refuses_a_bad_or_taken_name(console: TestClient) -> None:
    assert post_form(console, "/console/api-keys", {"name": "has space"}).status_code == 400
    assert post_form(console, "/console/api-keys", {}).status_code == 400
    assert post_form(console, "/console/api-keys", {"name": "k"}).status_code == 201
    taken = post_form(console, "/console/api-keys", {"name": "k"})
    assert taken.status_code == 409
    assert "key_exists" in taken.text


def test_revoke_stops_the_key(console: TestClient) -> None:
    created = post_form(console, "/console/api-keys", {"name": "temp"})
    match = re.search(r'data-copy="(nreg_[^"]+)"', created.text)
    assert match is not None
    response = post_form(console, "/console/api-keys/temp/revoke")
    assert response.status_code == 303
    assert response.headers["location"] == "/console/api-keys?notice=revoked"
    lookup = console.get(
        "/v1/connections", headers={"Authorization": f"Bearer {match.group(1)}"}, auth=None
    )
    assert lookup.status_code == 401
    page = console.get("/console/api-keys?notice=revoked").text
    assert "The key is revoked" in page
    assert ">Revoke</button>" not in page
    assert post_form(console, "/console/api-keys/temp/revoke").status_code == 303
    unknown = post_form(console, "/console/api-keys/nobody/revoke")
    assert unknown.status_code == 404
    assert "<code>key_not_found</code>" in unknown.text


def test_revoking_a_key_name_with_nul_is_not_found_on_both_databases(console: TestClient) -> None:
    # Postgres text cannot hold NUL, so no key has such a name: the same 404 as SQLite's.
    assert post_form(console, "/console/api-keys", {"name": "temp"}).status_code == 201
    for name in ("temp%00", "%00"):
        response = post_form(console, f"/console/api-keys/{name}/revoke")
        assert response.status_code == 404, response.text
        assert "<code>key_not_found</code>" in response.text
    assert ">Revoke</button>" in console.get("/console/api-keys").text


def _failed_delivery(console: TestClient, sync_engine: Engine, connection_id: str) -> int:
    """A stored delivery whose processing failed (as if the database had gone away)."""
    delivery_id = int(
        deliver(console, connection_id=connection_id, tags={"end_user_id": "u1"})["delivery_id"]
    )
    with sync_engine.begin() as conn:
        conn.execute(
            text("DELETE FROM connection_events WHERE delivery_id = :id"), {"id": delivery_id}
        )
        # Without ON DELETE CASCADE on SQLite's test engine (no foreign_keys pragma).
        conn.execute(
            text(
                "DELETE FROM connection_tags WHERE connection_pk IN"
                " (SELECT id FROM connections WHERE connection_id = :c)"
            ),
            {"c": connection_id},
        )
        conn.execute(text("DELETE FROM connections WHERE connection_id = :c"), {"c": connection_id})
        conn.execute(
            text("UPDATE deliveries SET outcome = 'failed', error = 'boom' WHERE id = :id"),
            {"id": delivery_id},
        )
    return delivery_id


def test_replay_applies_a_failed_delivery(console: TestClient, sync_engine: Engine) -> None:
    delivery_id = _failed_delivery(console, sync_engine, "conn-9")
    page = console.get(f"/console/deliveries/{delivery_id}").text
    assert ">Replay</button>" in page
    response = post_form(console, f"/console/deliveries/{delivery_id}/replay")
    assert response.status_code == 303
    assert response.headers["location"] == f"/console/deliveries/{delivery_id}?notice=replayed"
    after = console.get(response.headers["location"]).text
    assert "The delivery was replayed" in after
    assert "outcome-applied" in after, after
    assert connection_row(sync_engine, "conn-9").end_user_id == "u1"
    unknown = post_form(console, "/console/deliveries/424242/replay")
    assert unknown.status_code == 404
    assert "<code>delivery_not_found</code>" in unknown.text


def test_replay_all_failed(console: TestClient, sync_engine: Engine) -> None:
    for connection_id in ("conn-1", "conn-2"):
        _failed_delivery(console, sync_engine, connection_id)
    response = post_form(console, "/console/deliveries/replay-failed")
    assert response.status_code == 200
    assert "Replayed 2 deliveries" in response.text
    assert connection_row(sync_engine, "conn-2").status == "active"
    again = post_form(console, "/console/deliveries/replay-failed")
    assert "Replayed 0 deliveries" in again.text


def test_refresh_reads_config_and_metadata_from_nango(
    console: TestClient, fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(
        connection_id="conn-1",
        tags={"end_user_id": "u1"},
        metadata={"plan": "pro"},
        connection_config={"instance_url": "https://acme.example.com"},
    )
    deliver(console, connection_id="conn-1", tags={"end_user_id": "u1"})
    pk = _pk(sync_engine, "conn-1")
    response = post_form(console, f"/console/connections/{pk}/refresh")
    assert response.status_code == 303
    assert response.headers["location"] == f"/console/connections/{pk}?notice=refreshed"
    page = console.get(response.headers["location"]).text
    assert "The connection was refreshed from Nango" in page
    assert "instance_url" in page
    assert "&#34;plan&#34;: &#34;pro&#34;" in page


def test_refresh_of_a_connection_nango_no_longer_has(
    console: TestClient, sync_engine: Engine
) -> None:
    deliver(console, connection_id="conn-1", tags={"end_user_id": "u1"})
    response = post_form(console, f"/console/connections/{_pk(sync_engine, 'conn-1')}/refresh")
    assert response.status_code == 303
    assert connection_row(sync_engine, "conn-1").status == "deleted"


def test_set_owner_of_an_unattributed_connection(
    console: TestClient, fake_nango: FakeNango, sync_engine: Engine
) -> None:
    fake_nango.add_connection(connection_id="nobody")
    deliver(console, connection_id="nobody")
    pk = _pk(sync_engine, "nobody")
    page = console.get(f"/console/connections/{pk}").text
    assert "Set owner" in page
    response = post_form(
        console,
        f"/console/connections/{pk}/owner",
        {"end_user_id": "user-77", "end_user_email": "", "organization_id": "org-1"},
    )
    assert response.status_code == 303, response.text
    row = connection_row(sync_engine, "nobody")
    assert row.end_user_id == "user-77"
    assert row.organization_id == "org-1"
    found = fake_nango.find("nobody")
    assert found is not None
    assert found.tags["end_user_id"] == "user-77"
    after = console.get(response.headers["location"]).text
    assert "The owner is set" in after
    assert "Set owner" not in after


@pytest.mark.parametrize(
    "fields",
    [{}, {"end_user_email": "ada@example.com"}, {"end_user_id": "u", "end_user_email": "nope"}],
)
def test_set_owner_refuses_what_the_api_refuses(
    console: TestClient, sync_engine: Engine, fields: dict[str, str]
) -> None:
    deliver(console, connection_id="nobody")
    response = post_form(
        console, f"/console/connections/{_pk(sync_engine, 'nobody')}/owner", fields
    )
    assert response.status_code == 400
    assert "invalid_body" in response.text
