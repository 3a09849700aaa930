"""The connection state rules of app/webhooks/rules.py, driven over HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from tests.rows import indexed_tags
from tests.webhooks.helpers import auth_body, nango_json, signed_headers, sync_body


def send(client: TestClient, body: bytes) -> str:
    response = client.post("/webhooks/nango", content=body, headers=signed_headers(body))
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


def connections(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT * FROM connections ORDER BY id")))


def only(engine: Engine) -> Any:
    rows = connections(engine)
    assert len(rows) == 1
    return rows[0]


def history(engine: Engine) -> list[tuple[str, str | None, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT action, from_status, to_status FROM connection_events ORDER BY id")
        )
        return [tuple(row) for row in rows]


def test_creation_attributes_from_tags(client: TestClient, sync_engine: Engine) -> None:
    tags = {
        "end_user_id": "u1",
        "end_user_email": "a@b.co",
        "end_user_display_name": "Ann",
        "organization_id": "o1",
        "organization_display_name": "Org One",
        "plan": "pro",
    }
    send(client, auth_body(tags=tags))
    row = only(sync_engine)
    assert row.status == "active"
    assert (row.end_user_id, row.end_user_email, row.end_user_display_name) == (
        "u1",
        "a@b.co",
        "Ann",
    )
    assert (row.organization_id, row.organization_display_name) == ("o1", "Org One")
    assert (row.provider, row.auth_mode, row.environment) == ("github", "OAUTH2", "prod")
    assert indexed_tags(sync_engine) == tags
    assert history(sync_engine) == [("creation", None, "active")]


def test_creation_falls_back_to_end_user(client: TestClient, sync_engine: Engine) -> None:
    end_user = {"endUserId": "legacy-u", "endUserEmail": "l@x.io", "organizationId": "legacy-o"}
    send(client, auth_body(tags={}, end_user=end_user))
    row = only(sync_engine)
    assert (row.end_user_id, row.end_user_email, row.organization_id) == (
        "legacy-u",
        "l@x.io",
        "legacy-o",
    )


def test_unattributed_connection_is_stored(client: TestClient, sync_engine: Engine) -> None:
    send(client, auth_body())
    row = only(sync_engine)
    assert row.status == "active"
    assert row.end_user_id is None
    assert row.organization_id is None


def test_refresh_failure_then_recovery(client: TestClient, sync_engine: Engine) -> None:
    send(client, auth_body(tags={"end_user_id": "u1"}))
    error = {"type": "refresh_token_external_error", "description": "token revoked"}
    send(client, auth_body(operation="refresh", success=False, error=error))
    broken = only(sync_engine)
    assert broken.status == "auth_error"
    assert (broken.error_type, broken.error_description) == (
        "refresh_token_external_error",
        "token revoked",
    )
    assert broken.error_since is not None
    assert broken.end_user_id == "u1"  # the refresh body had no tags: attribution kept
    send(client, auth_body(operation="refresh", success=True))
    healed = only(sync_engine)
    assert healed.status == "active"
    assert (healed.error_type, healed.error_description, healed.error_since) == (None, None, None)
    assert history(sync_engine) == [
        ("creation", None, "active"),
        ("refresh", "active", "auth_error"),
        ("refresh", "auth_error", "active"),
    ]


def test_error_since_is_kept_while_the_error_repeats(
    client: TestClient, sync_engine: Engine
) -> None:
    send(client, auth_body())
    send(client, auth_body(operation="refresh", success=False, error={"type": "a"}))
    first = only(sync_engine).error_since
    send(client, auth_body(operation="refresh", success=False, error={"type": "b"}))
    row = only(sync_engine)
    assert row.error_type == "b"
    assert row.error_since == first


def test_override_failure_and_success(client: TestClient, sync_engine: Engine) -> None:
    send(client, auth_body())
    send(client, auth_body(operation="override", success=False, error={"type": "denied"}))
    assert only(sync_engine).status == "auth_error"
    send(client, auth_body(operation="override", success=True, tags={"end_user_id": "u9"}))
    row = only(sync_engine)
    assert (row.status, row.error_type, row.end_user_id) == ("active", None, "u9")


def test_deletion_is_final_for_later_events(client: TestClient, sync_engine: Engine) -> None:
    send(client, auth_body(tags={"end_user_id": "u1"}))
    send(client, auth_body(operation="deletion"))
    deleted = only(sync_engine)
    assert deleted.status == "deleted"
    assert deleted.deleted_at is not None
    for operation, success in [("refresh", False), ("refresh", True), ("override", True)]:
        send(client, auth_body(operation=operation, success=success))
    send(client, auth_body(tags={"end_user_id": "u1", "late": "yes"}))
    row = only(sync_engine)
    assert row.status == "deleted"
    assert row.deleted_at == deleted.deleted_at
    assert history(sync_engine)[-1] == ("creation", "deleted", "deleted")


def test_deletion_before_creation_leaves_a_tombstone(
    client: TestClient, sync_engine: Engine
) -> None:
    send(client, auth_body(operation="deletion"))
    assert only(sync_engine).status == "deleted"
    send(client, auth_body(tags={"end_user_id": "u1"}))
    row = only(sync_engine)
    assert row.status == "deleted"
    assert row.end_user_id == "u1"  # attribution still recorded for the history


def test_event_for_unknown_connection_creates_it(client: TestClient, sync_engine: Engine) -> None:
    send(client, auth_body(operation="refresh", success=False, tags={"organization_id": "o"}))
    row = only(sync_engine)
    assert (row.status, row.organization_id) == ("auth_error", "o")
    assert history(sync_engine) == [("refresh", None, "auth_error")]


def test_late_creation_does_not_undo_a_later_failure(
    client: TestClient, sync_engine: Engine
) -> None:
    send(client, auth_body(operation="refresh", success=False))
    send(client, auth_body(tags={"end_user_id": "u1"}))
    row = only(sync_engine)
    assert (row.status, row.end_user_id) == ("auth_error", "u1")


def test_creation_failure_creates_no_connection(client: TestClient, sync_engine: Engine) -> None:
    assert send(client, auth_body(success=False, error={"type": "invalid_callback"})) == "recorded"
    body = nango_json(
        {"type": "auth", "operation": "creation", "success": False, "providerConfigKey": "g"}
    )
    assert send(client, body) == "recorded"
    assert connections(sync_engine) == []


def test_failed_deletion_changes_nothing(client: TestClient, sync_engine: Engine) -> None:
    send(client, auth_body())
    assert send(client, auth_body(operation="deletion", success=False)) == "recorded"
    assert only(sync_engine).status == "active"


def test_legacy_ids_repeat_across_integrations_and_environments(
    client: TestClient, sync_engine: Engine
) -> None:
    send(client, auth_body(connection_id="user-123", integration="github"))
    send(client, auth_body(connection_id="user-123", integration="slack"))
    send(client, auth_body(connection_id="user-123", integration="github", environment="dev"))
    send(client, auth_body(connection_id="user-123", integration="slack", operation="deletion"))
    rows = {(r.environment, r.integration_id): r.status for r in connections(sync_engine)}
    assert rows == {
        ("prod", "github"): "active",
        ("prod", "slack"): "deleted",
        ("dev", "github"): "active",
    }


def test_attribution_is_merged_never_erased(client: TestClient, sync_engine: Engine) -> None:
    send(client, auth_body(tags={"end_user_id": "u1", "organization_id": "o1", "a": "1"}))
    send(client, auth_body(operation="override", tags={"b": "2"}))
    row = only(sync_engine)
    assert (row.end_user_id, row.organization_id) == ("u1", "o1")
    expected = {"end_user_id": "u1", "organization_id": "o1", "a": "1", "b": "2"}
    assert indexed_tags(sync_engine) == expected


def test_history_links_each_change_to_its_delivery(client: TestClient, sync_engine: Engine) -> None:
    send(client, auth_body())
    send(client, auth_body(operation="refresh", success=False))
    with sync_engine.connect() as conn:
        linked = conn.execute(
            text(
                "SELECT e.action, d.operation FROM connection_events e "
                "JOIN deliveries d ON d.id = e.delivery_id ORDER BY e.id"
            )
        ).all()
    assert [tuple(row) for row in linked] == [("creation", "creation"), ("refresh", "refresh")]


@pytest.mark.parametrize("success", [True, False])
def test_sync_result_is_recorded_on_the_connection(
    client: TestClient, sync_engine: Engine, success: bool
) -> None:
    send(client, auth_body(connection_id="c", integration="github"))
    sync = sync_body(success=success, connection_id="c", model="GithubIssue")
    assert send(client, sync) == "applied"
    row = only(sync_engine)
    assert (row.last_sync_name, row.last_sync_model) == ("issues", "GithubIssue")
    assert bool(row.last_sync_success) is success
    assert row.last_sync_at is not None
    assert row.last_sync_error == (None if success else "HTTP 500 from GitHub")
    assert row.status == "active"  # a failed sync is not an auth error
