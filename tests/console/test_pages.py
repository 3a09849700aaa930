"""Every page of the console, over HTTP, on SQLite and Postgres, with the data it shows."""

from __future__ import annotations

import html
import re
from typing import Any

from sqlalchemy import Engine, insert, text
from sqlmodel import SQLModel
from starlette.testclient import TestClient

import app.db.tables  # noqa: F401  (registers the tables on the metadata)
from app.db.types import utcnow
from tests.console.conftest import deliver, fresh_overview
from tests.rows import add_delivery

RUNS = SQLModel.metadata.tables["reconcile_runs"]
API_KEYS = SQLModel.metadata.tables["api_keys"]


def _pk(sync_engine: Engine, connection_id: str) -> int:
    with sync_engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT id FROM connections WHERE connection_id = :c"), {"c": connection_id}
            ).scalar_one()
        )


def _table_rows(body: str) -> list[list[str]]:
    """The cells of each row of the page's table body."""
    tbody = body.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<td>(.*?)</td>", row, flags=re.DOTALL) for row in tbody.split("<tr>")[1:]]


def _arrange(console: TestClient) -> None:
    deliver(console, connection_id="conn-a", tags={"end_user_id": "user-42", "plan": "pro"})
    deliver(console, connection_id="conn-b", integration="slack", tags={"organization_id": "org-7"})
    deliver(console, connection_id="conn-c")  # nobody's
    deliver(console, connection_id="conn-a", operation="refresh", success=False)


def test_overview_shows_counts_chart_and_warnings(make_console: Any) -> None:
    console: TestClient = make_console(
        nango_webhook_signing_keys="", reconcile_interval_seconds=None
    )
    assert "NANGO_WEBHOOK_SIGNING_KEYS is not set" in console.get("/console/").text
    console = make_console()
    _arrange(console)
    page = fresh_overview(console)
    assert page.status_code == 200
    body = page.text
    assert "RECONCILE_INTERVAL_SECONDS is not set" in body
    assert "NANGO_WEBHOOK_SIGNING_KEYS" not in body
    assert "<svg" in body
    assert "4 deliveries in the last 24 hours" in body
    assert re.search(r'class="bar bar-applied"', body)
    assert "never run" in body
    # connections by environment and status: prod has 2 active and 1 auth_error
    assert re.search(r"status=active\">2<", body)
    assert re.search(r"status=auth_error\">1<", body)


def test_overview_shows_the_last_reconcile_run(console: TestClient, sync_engine: Engine) -> None:
    with sync_engine.begin() as conn:
        conn.execute(
            insert(RUNS).values(
                trigger="schedule",
                started_at=utcnow(),
                finished_at=utcnow(),
                status="succeeded",
                counts={"seen": 12, "created": 3},
            )
        )
    body = fresh_overview(console).text
    assert "created 3" in body
    assert "seen 12" in body


# A search's fields, and which of the arranged connections it finds.
SEARCHES = [
    ({}, {"conn-a", "conn-b", "conn-c"}),
    ({"end_user_id": "user-42"}, {"conn-a"}),
    ({"organization_id": "org-7"}, {"conn-b"}),
    ({"tag": "plan=pro"}, {"conn-a"}),
    ({"status": "auth_error"}, {"conn-a"}),
    ({"unattributed": "1"}, {"conn-c"}),
    ({"integration_id": "slack", "environment": "prod"}, {"conn-b"}),
    ({"connection_id": "conn-b"}, {"conn-b"}),
    # The blank fields of a submitted form are no filter.
    (
        {"end_user_id": "", "tag": "", "status": "", "connection_id": ""},
        {"conn-a", "conn-b", "conn-c"},
    ),
]


def test_connections_search(console: TestClient) -> None:
    _arrange(console)
    for params, expected in SEARCHES:
        body = console.get("/console/connections", params=params).text
        found = {name for name in ("conn-a", "conn-b", "conn-c") if f">{name}</a>" in body}
        assert found == expected, params


def test_connections_search_refuses_what_the_api_refuses(console: TestClient) -> None:
    for params in (
        {"tag": "no-equals-sign"},
        {"tag": "1bad=x"},
        {"status": "unknown"},
        {"cursor": "forged"},
        {"connection_id": "a\x00b"},
    ):
        response = console.get("/console/connections", params=params)
        assert response.status_code == 400, params
        assert "<h1>Error 400</h1>" in response.text


def test_connections_paginate_with_signed_cursors(console: TestClient, monkeypatch: Any) -> None:
    from app.console import search

    monkeypatch.setattr(search, "PAGE_SIZE", 2)
    _arrange(console)
    first = console.get("/console/connections", params={"status": "any"}).text
    match = re.search(r'href="(/console/connections\?[^"]+)" rel="next"', first)
    assert match is not None
    second = console.get(html.unescape(match.group(1))).text
    assert "conn-a" in second
    assert "conn-a" not in first.split("<tbody>")[1]
    assert 'rel="next"' not in second
    # A cursor is bound to its filters.
    cursor = re.search(r"cursor=([^&\"]+)", html.unescape(match.group(1)))
    assert cursor is not None
    other = console.get("/console/connections", params={"cursor": cursor.group(1)})
    assert other.status_code == 400


def test_connection_page_shows_owner_tags_error_and_timeline(
    console: TestClient, sync_engine: Engine
) -> None:
    _arrange(console)
    page = console.get(f"/console/connections/{_pk(sync_engine, 'conn-a')}")
    assert page.status_code == 200
    body = page.text
    assert "user-42" in body
    assert "plan=pro" in body
    assert "refresh_token_external_error" in body
    assert body.count('class="timeline"') == 1
    assert "creation" in body
    assert "refresh" in body
    assert re.search(r'href="/console/deliveries/\d+">delivery #\d+</a>', body)
    assert 'data-copy="conn-a"' in body
    assert "Create a reconnect link" in body


def test_connection_history_pages(
    console: TestClient, sync_engine: Engine, monkeypatch: Any
) -> None:
    from app.console import pages

    monkeypatch.setattr(pages, "HISTORY_PAGE", 1)
    _arrange(console)
    pk = _pk(sync_engine, "conn-a")
    first = console.get(f"/console/connections/{pk}").text
    match = re.search(r'href="([^"]+)" rel="next">Older', first)
    assert match is not None
    older = console.get(html.unescape(match.group(1)))
    assert older.status_code == 200
    assert "creation" in older.text


def test_unknown_connection_is_a_404_page(console: TestClient) -> None:
    response = console.get("/console/connections/999999")
    assert response.status_code == 404
    assert "connection_not_found" in response.text
    assert console.get("/console/connections/not-a-number").status_code == 404


def test_end_user_page(console: TestClient) -> None:
    _arrange(console)
    deliver(console, connection_id="conn-d", integration="notion", tags={"end_user_id": "user-42"})
    body = console.get("/console/end-users/user-42").text
    assert "github" in body
    assert "notion" in body
    assert "Needs re-authorization" in body
    assert "Connected" in body
    nobody = console.get("/console/end-users/nobody%2Fhere").text
    assert "No live connection" in nobody
    assert "nobody/here" in nobody
    assert console.get("/console/end-users/a%00b").status_code == 200


def test_reconcile_page_lists_runs_newest_first(
    console: TestClient, sync_engine: Engine, monkeypatch: Any
) -> None:
    from app.console import pages

    monkeypatch.setattr(pages, "RUNS_PAGE", 2)
    with sync_engine.begin() as conn:
        for index in range(3):
            conn.execute(
                insert(RUNS).values(
                    trigger="cli",
                    started_at=utcnow(),
                    status="failed" if index == 2 else "succeeded",
                    counts={"seen": index},
                    error="NangoUnavailable" if index == 2 else None,
                )
            )
    body = console.get("/console/reconcile").text
    assert "NangoUnavailable" in body
    assert "#3" in body
    assert "#1" not in body
    match = re.search(r'href="([^"]+)" rel="next"', body)
    assert match is not None
    older = console.get(html.unescape(match.group(1))).text
    assert "#1" in older
    assert console.get("/console/reconcile?before=junk").status_code == 200


def test_api_keys_page_lists_last_use(console: TestClient, sync_engine: Engine) -> None:
    with sync_engine.begin() as conn:
        conn.execute(
            insert(API_KEYS).values(
                name="billing", key_hash="0" * 64, created_at=utcnow(), last_used_at=utcnow()
            )
        )
        conn.execute(
            insert(API_KEYS).values(
                name="old", key_hash="1" * 64, created_at=utcnow(), revoked_at=utcnow()
            )
        )
    body = console.get("/console/api-keys").text
    rows = {cells[0]: cells for cells in _table_rows(body)}
    # Name, access, created, last used, revoked, action.
    assert set(rows) == {"billing", "old"}
    assert "just now" in rows["billing"][3]
    assert rows["billing"][4] == ""
    assert "never" in rows["old"][3]
    assert "just now" in rows["old"][4]
    assert body.count(">Revoke</button>") == 1
    assert "0" * 64 not in body


def test_deliveries_filter_and_page(
    console: TestClient, sync_engine: Engine, monkeypatch: Any
) -> None:
    from app.console import deliveries

    monkeypatch.setattr(deliveries, "PAGE_SIZE", 2)
    _arrange(console)
    add_delivery(sync_engine, webhook_type="sync", outcome="failed", error="boom")
    everything = console.get("/console/deliveries")
    assert everything.status_code == 200
    match = re.search(r'href="([^"]+)" rel="next">Older', everything.text)
    assert match is not None
    assert console.get(html.unescape(match.group(1))).status_code == 200
    failed = console.get("/console/deliveries", params={"outcome": "failed"}).text
    assert "boom" in failed
    assert failed.count('class="badge outcome-failed"') == 1
    sync = console.get("/console/deliveries", params={"type": "sync"}).text
    assert "boom" in sync
    by_connection = console.get("/console/deliveries", params={"connection": "conn-b"}).text
    # Its one delivery listed, not just the filter's own field showing "conn-b".
    assert re.findall(r'<span class="id">([^<]+)</span>', by_connection) == ["conn-b"]
    assert "boom" not in by_connection
    later = console.get("/console/deliveries", params={"from": "2999-01-01T00:00"}).text
    assert "No delivery matches" in later
    window = console.get(
        "/console/deliveries", params={"from": "2000-01-01T00:00", "to": "2999-01-01T00:00+00:00"}
    )
    assert "boom" in window.text


def test_deliveries_refuse_bad_filters(console: TestClient) -> None:
    for params in (
        {"outcome": "exploded"},
        {"from": "yesterday"},
        {"type": "x" * 300},
        {"cursor": "forged"},
    ):
        response = console.get("/console/deliveries", params=params)
        assert response.status_code == 400, params


def test_delivery_page_shows_body_headers_and_outcome(console: TestClient) -> None:
    delivery_id = deliver(console, connection_id="conn-a", tags={"end_user_id": "user-42"})[
        "delivery_id"
    ]
    page = console.get(f"/console/deliveries/{delivery_id}")
    assert page.status_code == 200
    body = page.text
    assert "&#34;connectionId&#34;: &#34;conn-a&#34;" in body or '"connectionId": "conn-a"' in body
    assert "user-agent" in body
    assert "x-nango-hmac-sha256" not in body
    assert "applied" in body
    assert ">Replay</button>" not in body  # only failed deliveries have it
    assert console.get("/console/deliveries/424242").status_code == 404
