from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.application import create_app
from app.db.types import utcnow
from app.webhooks import inbox
from app.webhooks.signature import verify_signature
from tests.conftest import TEST_SIGNING_KEY, empty_tables
from tests.rows import all_connections, connection_row, feed, history, indexed_tags
from tests.webhooks.helpers import (
    BY_NAME,
    VECTORS,
    VECTORS_FILE,
    auth_body,
    legacy_sign,
    nango_json,
    sign,
    signed_headers,
)

SHARED_VECTORS = Path(__file__).resolve().parents[3] / "shared" / "nango" / "webhook-vectors.json"


def post(client: TestClient, body: bytes, headers: dict[str, str] | None = None) -> Any:
    return client.post("/webhooks/nango", content=body, headers=headers or signed_headers(body))


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608


def deliveries(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT * FROM deliveries ORDER BY id")).mappings())


@pytest.mark.skipif(not SHARED_VECTORS.exists(), reason="../shared is not beside this checkout")
def test_vector_file_is_the_shared_one_unchanged() -> None:
    assert VECTORS_FILE.read_bytes() == SHARED_VECTORS.read_bytes()


def test_facts_signature_vectors() -> None:
    from app.settings import SigningKey

    key = SigningKey(b"secret")
    hmac_hex = b"b82fcb791acec57859b989b430a826488ce2e479fdf92326bd0a2e8375a42ba4"
    legacy_hex = b"22439a879b090cd05e5b51c5b5d7e4a205830e6ab4f54b90f5a822b7c7110934"
    common: dict[str, Any] = {"body": b"payload", "keys": [key]}
    assert verify_signature(hmac_header=hmac_hex, legacy_header=None, accept_legacy=False, **common)
    assert verify_signature(
        hmac_header=None, legacy_header=legacy_hex, accept_legacy=True, **common
    )
    assert not verify_signature(
        hmac_header=None, legacy_header=legacy_hex, accept_legacy=False, **common
    )


EXPECTED_OUTCOME = {
    "auth-creation-enduser-legacy": "applied",
    "auth-creation-tags-only": "applied",
    "auth-override": "applied",
    "auth-refresh-failure": "applied",
    "auth-creation-failure": "recorded",
    "auth-non-ascii": "applied",
    "sync-success": "recorded",  # no connection known yet: stored, nothing to update
    "sync-error": "recorded",
    "forward": "recorded",
    "async-action": "recorded",
}


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_every_vector_is_verified_stored_and_acknowledged(
    client: TestClient, sync_engine: Engine, vector: dict[str, str]
) -> None:
    body = vector["body"].encode("utf-8")
    response = post(client, body, {"X-Nango-Hmac-Sha256": vector["x_nango_hmac_sha256"]})
    assert response.status_code == 200
    assert response.json()["status"] == EXPECTED_OUTCOME[vector["name"]]
    stored = deliveries(sync_engine)
    assert len(stored) == 1
    assert stored[0]["body"].encode("utf-8") == body
    payload = json.loads(body)
    assert stored[0]["connection_id"] == payload.get("connectionId")
    assert stored[0]["webhook_type"] == payload["type"]


def test_all_vectors_in_sequence_build_the_expected_connections(
    client: TestClient, sync_engine: Engine
) -> None:
    for vector in VECTORS:
        body = vector["body"].encode("utf-8")
        assert post(client, body, {"X-Nango-Hmac-Sha256": vector["x_nango_hmac_sha256"]}).is_success
    with sync_engine.connect() as conn:
        rows = {
            (row.integration_id, row.connection_id): row
            for row in conn.execute(text("SELECT * FROM connections"))
        }
    github = rows[("github", "b8a9f6a2-3c1d-4e5f-8a7b-9c0d1e2f3a4b")]
    assert github.status == "auth_error"
    assert github.error_type == "refresh_token_external_error"
    assert (github.end_user_id, github.organization_id) == ("user_123", "org_456")
    assert github.end_user_email == "jane@acme.com"
    assert github.last_sync_name == "issues"
    assert github.last_sync_success is False or github.last_sync_success == 0
    assert github.last_sync_error == "An error occurred during an HTTP call"
    hubspot = rows[("hubspot", "0c2f6d1e-7b7a-4c39-9f4e-3d2a1b0c9e8f")]
    assert (hubspot.status, hubspot.environment) == ("active", "dev")
    assert (hubspot.end_user_id, hubspot.organization_id) == ("u_42", "org_7")
    assert rows[("p", "c1")].end_user_display_name == "Zoë"
    assert count(sync_engine, "deliveries") == len(VECTORS)


def test_duplicate_delivery_answers_200_and_changes_nothing(
    client: TestClient, sync_engine: Engine
) -> None:
    body = auth_body(tags={"end_user_id": "u1"})
    first = post(client, body).json()
    assert first["status"] == "applied"
    before = count(sync_engine, "connection_events")
    again = post(client, body)
    assert again.status_code == 200
    # Issue 14, point 7: the ID of the delivery already stored, not null.
    assert again.json() == {"status": "duplicate", "delivery_id": first["delivery_id"]}
    assert count(sync_engine, "deliveries") == 1
    assert count(sync_engine, "connection_events") == before


def test_same_body_after_the_dedupe_window_is_a_new_event(
    client: TestClient, sync_engine: Engine
) -> None:
    failure = auth_body(operation="refresh", success=False)
    assert post(client, auth_body()).is_success
    assert post(client, failure).is_success
    assert post(client, auth_body(operation="refresh", success=True)).is_success
    with sync_engine.begin() as conn:
        conn.execute(
            text("UPDATE deliveries SET received_at = :old"),
            {"old": utcnow() - timedelta(hours=1)},
        )
    # Nango sends the very same body when the credentials break again after a recovery.
    response = post(client, failure)
    assert response.json()["status"] == "applied"
    with sync_engine.connect() as conn:
        status = conn.execute(text("SELECT status FROM connections")).scalar_one()
        keys = conn.execute(text("SELECT dedupe_key FROM deliveries ORDER BY id")).scalars().all()
    assert status == "auth_error"
    assert len(keys) == 4
    assert keys[1] == f"{inbox.dedupe_key(failure)}#2"
    assert keys[3] == inbox.dedupe_key(failure)


def test_trailing_slash_is_served_without_redirect(client: TestClient) -> None:
    body = auth_body()
    response = client.post(
        "/webhooks/nango/", content=body, headers=signed_headers(body), follow_redirects=False
    )
    assert response.status_code == 200


def test_wrong_method_is_405(client: TestClient) -> None:
    assert client.get("/webhooks/nango").status_code == 405
    assert client.put("/webhooks/nango", content=b"{}").status_code == 405


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda b, s: (b[:-2] + b"X}", s), id="tampered-byte"),
        pytest.param(lambda b, s: (b, s[:-1] + ("0" if s[-1] != "0" else "1")), id="tampered-sig"),
        pytest.param(lambda b, s: (b, sign(b, "another-key")), id="wrong-key"),
        pytest.param(lambda b, s: (b, ""), id="empty-signature"),
        pytest.param(lambda b, s: (b, "zz" * 32), id="non-hex"),
        pytest.param(lambda b, s: (b, s[:10]), id="too-short"),
    ],
)
def test_bad_signature_is_401_and_nothing_is_stored(
    client: TestClient, sync_engine: Engine, mutate: Any
) -> None:
    body, signature = mutate(auth_body(), sign(auth_body()))
    response = post(client, body, {"X-Nango-Hmac-Sha256": signature})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_signature"
    assert count(sync_engine, "deliveries") == 0


def test_missing_signature_is_401(client: TestClient) -> None:
    assert client.post("/webhooks/nango", content=auth_body()).status_code == 401


def test_rotation_accepts_old_and_new_keys(make_settings: Any, sync_engine: Engine) -> None:
    settings = make_settings(nango_webhook_signing_keys=f"old-key,{TEST_SIGNING_KEY}")
    with TestClient(create_app(settings)) as client:
        first = auth_body(connection_id="a")
        second = auth_body(connection_id="b")
        assert post(client, first, {"X-Nango-Hmac-Sha256": sign(first, "old-key")}).is_success
        assert post(client, second, signed_headers(second)).is_success
    assert count(sync_engine, "deliveries") == 2


def test_bound_key_must_match_the_body_environment(make_settings: Any, sync_engine: Engine) -> None:
    settings = make_settings(nango_webhook_signing_keys=f"prod={TEST_SIGNING_KEY},dev=dev-key")
    with TestClient(create_app(settings)) as client:
        prod = auth_body(environment="prod")
        dev_signed_with_prod = auth_body(environment="dev", connection_id="x")
        dev = auth_body(environment="dev", connection_id="y")
        assert post(client, prod).status_code == 200
        assert post(client, dev_signed_with_prod).status_code == 401
        assert post(client, dev, {"X-Nango-Hmac-Sha256": sign(dev, "dev-key")}).status_code == 200
    assert count(sync_engine, "deliveries") == 2


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "sync", "connectionId": "c1", "providerConfigKey": "github", "success": True,
         "syncName": "contacts", "model": "Contact", "syncType": "INCREMENTAL"},
        {"type": "forward", "from": "github", "connectionId": "c1", "providerConfigKey": "github",
         "payload": {"action": "opened"}},
        {"type": "async_action", "from": "nango", "connectionId": "c1",
         "providerConfigKey": "github", "payload": {"id": "a1", "statusUrl": "/action/a1"}},
        {"action": "opened", "repository": {"id": 1}},  # an unattributed forward, unwrapped
    ],
    ids=["sync", "forward", "async_action", "raw-forward"],
)  # fmt: skip
def test_a_bound_key_accepts_bodies_that_name_no_environment(
    make_settings: Any, sync_engine: Engine, payload: dict[str, Any]
) -> None:
    """Only auth bodies carry `environment` (Nango's packages/webhooks/lib/auth.ts): the others
    belong to their key's environment. Refusing them (a 4xx, never retried) would also trip
    Nango's circuit breaker and drop every webhook, auth included, for a minute."""
    settings = make_settings(nango_webhook_signing_keys=f"prod={TEST_SIGNING_KEY},dev=dev-key")
    body = nango_json(payload)
    with TestClient(create_app(settings)) as client:
        assert post(client, body).status_code == 200
        other = nango_json({**payload, "marker": 1})
        dev = post(client, other, {"X-Nango-Hmac-Sha256": sign(other, "dev-key")})
        assert dev.status_code == 200
    assert [row["environment"] for row in deliveries(sync_engine)] == ["prod", "dev"]


def test_one_key_bound_to_two_environments_serves_both(
    make_settings: Any, sync_engine: Engine
) -> None:
    keys = f"prod={TEST_SIGNING_KEY},dev={TEST_SIGNING_KEY}"
    with TestClient(create_app(make_settings(nango_webhook_signing_keys=keys))) as client:
        assert post(client, auth_body(environment="prod", connection_id="p")).status_code == 200
        assert post(client, auth_body(environment="dev", connection_id="d")).status_code == 200
        assert post(client, auth_body(environment="staging", connection_id="s")).status_code == 401
    assert count(sync_engine, "deliveries") == 2


def test_legacy_signature_only_when_enabled_and_hmac_absent(
    make_settings: Any, sync_engine: Engine
) -> None:
    vector = BY_NAME["auth-creation-tags-only"]
    body = vector["body"].encode()
    legacy = {"X-Nango-Signature": vector["x_nango_signature"]}
    assert legacy["X-Nango-Signature"] == legacy_sign(body)
    with TestClient(create_app(make_settings())) as client:
        assert post(client, body, legacy).status_code == 401
    with TestClient(create_app(make_settings(nango_accept_legacy_signature=True))) as client:
        wrong_hmac = {**legacy, "X-Nango-Hmac-Sha256": "0" * 64}
        assert post(client, body, wrong_hmac).status_code == 401
        assert post(client, body, legacy).status_code == 200


def test_no_signing_key_configured_is_503_with_a_clear_message(make_settings: Any) -> None:
    with TestClient(create_app(make_settings(nango_webhook_signing_keys=""))) as client:
        assert client.get("/healthz").status_code == 200
        response = post(client, auth_body())
    assert response.status_code == 503
    assert "NANGO_WEBHOOK_SIGNING_KEYS" in response.json()["error"]["message"]


def test_body_over_the_limit_is_413_by_content_length(
    make_settings: Any, sync_engine: Engine
) -> None:
    with TestClient(create_app(make_settings(webhook_max_body_bytes=1024))) as client:
        body = auth_body(tags={"pad": "x" * 2000})
        response = post(client, body)
    assert response.status_code == 413
    assert count(sync_engine, "deliveries") == 0


def test_chunked_body_over_the_limit_is_413_while_reading(
    make_settings: Any, sync_engine: Engine
) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"x" * 512

    with TestClient(create_app(make_settings(webhook_max_body_bytes=1024))) as client:
        response = client.post(
            "/webhooks/nango", content=chunks(), headers={"X-Nango-Hmac-Sha256": "0" * 64}
        )
    assert response.status_code == 413
    assert count(sync_engine, "deliveries") == 0


@pytest.mark.anyio
async def test_the_limit_stops_the_read_instead_of_buffering_the_body() -> None:
    from starlette.requests import Request

    from app.bodies import read_limited
    from app.errors import PayloadTooLarge

    delivered = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        delivered += 1
        return {"type": "http.request", "body": b"x" * 512, "more_body": delivered < 1000}

    # No Content-Length: only counting while reading can refuse it.
    scope = {"type": "http", "method": "POST", "path": "/webhooks/nango", "headers": []}
    with pytest.raises(PayloadTooLarge):
        await read_limited(Request(scope, receive), 1024, seconds=5)
    assert delivered == 3  # 1536 bytes read, then refused: not the 512 000 on offer


def test_chunked_body_under_the_limit_is_accepted(client: TestClient) -> None:
    body = auth_body()
    response = client.post(
        "/webhooks/nango",
        content=iter([body[:10], body[10:]]),
        headers={"X-Nango-Hmac-Sha256": sign(body)},
    )
    assert response.status_code == 200


@pytest.mark.parametrize("body", [b"not json", b"\xff\xfe{}", b'{"a": 1', b"[" * 100_000], ids=str)
def test_verified_body_that_is_not_json_is_400(
    client: TestClient, sync_engine: Engine, body: bytes
) -> None:
    response = post(client, body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_body"
    assert count(sync_engine, "deliveries") == 0


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        ({"type": "brand_new_type", "connectionId": "c"}, "brand_new_type"),
        ({"objectId": 1, "subscriptionType": "contact.creation"}, "forward"),
        ([1, 2, 3], "unknown"),
        ({"type": "auth", "operation": "creation", "success": True}, "auth"),
        ({"type": "auth", "operation": "mystery", "success": True, "connectionId": "c"}, "auth"),
    ],
)
def test_unknown_and_odd_deliveries_are_stored_and_acknowledged(
    client: TestClient, sync_engine: Engine, payload: Any, kind: str
) -> None:
    body = json.dumps(payload).encode()
    response = post(client, body)
    assert response.status_code == 200
    assert response.json()["status"] == "recorded"
    assert [row["webhook_type"] for row in deliveries(sync_engine)] == [kind]
    assert count(sync_engine, "connections") == 0


def test_nul_and_surrogates_in_fields_are_stored_safely(
    client: TestClient, sync_engine: Engine
) -> None:
    body = (
        b'{"type":"auth","operation":"creation","success":true,"environment":"prod",'
        b'"providerConfigKey":"gi\\u0000thub","connectionId":"c\\ud800x",'
        b'"tags":{"end_user_id":"u\\u0000\\udfff1","k\\u0000":"v"}}'
    )
    response = post(client, body)
    assert response.status_code == 200
    assert response.json()["status"] == "applied"
    with sync_engine.connect() as conn:
        row = conn.execute(text("SELECT integration_id, end_user_id FROM connections")).one()
    assert row.integration_id == "github"
    assert "\x00" not in row.end_user_id


def test_stored_headers_never_include_signatures(client: TestClient, sync_engine: Engine) -> None:
    body = auth_body()
    headers = {**signed_headers(body), "X-Nango-Signature": legacy_sign(body)}
    post(client, body, headers)
    stored = deliveries(sync_engine)[0]["headers"]
    stored = json.loads(stored) if isinstance(stored, str) else stored
    assert stored["user-agent"] == "nango/0.71.4 (test)"
    assert not any("signature" in name or "hmac" in name for name in stored)
    assert sign(body) not in json.dumps(stored)


def _unreachable_database(tmp_path: Path) -> str:
    if os.environ.get("TEST_DB", "sqlite") == "postgres":
        return "postgresql://postgres@127.0.0.1:1/unreachable"
    return f"sqlite:///{tmp_path}/missing-dir/registry.db"


def test_database_down_is_503_with_retry_after(make_settings: Any, tmp_path: Path) -> None:
    settings = make_settings(database_url=_unreachable_database(tmp_path))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = post(client, auth_body())
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert response.json()["error"]["code"] == "storage_unavailable"


def test_schema_missing_is_503_not_500(make_settings: Any, tmp_path: Path) -> None:
    settings = make_settings(database_url=f"sqlite:///{tmp_path}/empty.db")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = post(client, auth_body())
    assert response.status_code == 503


def break_applying(patch: pytest.MonkeyPatch, failure: Any) -> None:
    """Make applying a delivery call ``failure``, on both of the inbox's paths: the rules, and
    Postgres's one-statement path for a new connection (``inbox.store_new_connection``)."""
    patch.setattr(inbox, "apply_delivery", failure)
    patch.setattr(inbox, "store_new_connection", failure)


def test_a_processing_bug_keeps_the_delivery_and_replay_applies_it(
    client: TestClient,
    sync_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from app.cli import main

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    with monkeypatch.context() as patch:
        break_applying(patch, broken)
        response = post(client, auth_body(tags={"end_user_id": "u1"}))
    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    stored = deliveries(sync_engine)
    assert stored[0]["outcome"] == "failed"
    assert "RuntimeError: a bug" in stored[0]["error"]
    assert count(sync_engine, "connections") == 0

    monkeypatch.setenv("DATABASE_URL", database_url)
    capsys.readouterr()
    assert main(["replay"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {
        "applied": 1,
        "replayed": 1,
    }
    with sync_engine.connect() as conn:
        assert conn.execute(text("SELECT end_user_id FROM connections")).scalar_one() == "u1"
        assert conn.execute(text("SELECT outcome FROM deliveries")).scalar_one() == "applied"
    # Idempotent: nothing is failed any more, and --all does not duplicate history.
    assert main(["replay"]) == 0
    events = count(sync_engine, "connection_events")
    assert main(["replay", "--all"]) == 0
    assert count(sync_engine, "connection_events") == events
    assert count(sync_engine, "connections") == 1


def test_a_database_outage_while_applying_is_503_not_a_failed_delivery(
    client: TestClient, sync_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    import psycopg

    # What each driver raises when the database goes away under a statement.
    lost: Exception = (
        psycopg.OperationalError("server closed the connection unexpectedly")
        if sync_engine.dialect.name == "postgresql"
        else sqlite3.OperationalError("disk I/O error")
    )

    async def outage(*args: Any, **kwargs: Any) -> Any:
        raise lost

    break_applying(monkeypatch, outage)
    response = post(client, auth_body())
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    # Nothing half-written: Nango's retry will store and apply it whole.
    assert count(sync_engine, "deliveries") == 0


def test_log_lines_carry_no_secret_and_no_body(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from app.logs import configure_logging

    configure_logging("info")
    try:
        body = auth_body(tags={"end_user_id": "very-private-user"})
        post(client, body)
        post(client, body, {"X-Nango-Hmac-Sha256": "f" * 64})
        out = capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    # The webhook's facts are on its request's access line.
    webhook = [line for line in lines if line.get("path") == "/webhooks/nango"]
    assert webhook[0]["outcome"] == "applied"
    assert webhook[0]["connection_id"] == "conn-1"
    assert TEST_SIGNING_KEY not in out
    assert sign(body) not in out
    assert "f" * 64 not in out
    assert "very-private-user" not in out


def refusals(reason: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "nango_registry_webhook_signature_failures_total", {"reason": reason}
    )
    return value or 0.0


def test_every_refusal_answers_the_same_and_logs_and_counts_why(
    make_settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14, point 6: one 401 for all; the reason in the log line and the metric."""
    body = auth_body(environment="dev")
    good = sign(body)
    cases = {
        "missing": {},
        "malformed": {"X-Nango-Hmac-Sha256": "not-a-digest"},
        "legacy_only": {"X-Nango-Signature": legacy_sign(body)},
        "mismatch": {"X-Nango-Hmac-Sha256": sign(body, "another-key")},
        "environment": {"X-Nango-Hmac-Sha256": good},
    }
    settings = make_settings(nango_webhook_signing_keys=f"prod={TEST_SIGNING_KEY}")
    with TestClient(create_app(settings)) as client:
        capsys.readouterr()
        answers = set()
        for reason, headers in cases.items():
            before = refusals(reason)
            response = post(client, body, {"content-type": "application/json", **headers})
            answers.add((response.status_code, response.text))
            assert refusals(reason) == before + 1, reason
    refused = {"code": "invalid_signature", "message": "the webhook signature does not verify"}
    assert answers == {(401, json.dumps({"error": refused}, separators=(",", ":")))}
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    rejected = [line for line in lines if line["event"] == "webhook_rejected"]
    assert [line["refusal"] for line in rejected] == list(cases)
    (legacy,) = [line for line in rejected if line["refusal"] == "legacy_only"]
    assert "NANGO_ACCEPT_LEGACY_SIGNATURE" in legacy["hint"]
    assert "0.69.15" in legacy["hint"]
    assert good not in capsys.readouterr().err


def test_a_new_connection_s_webhook_costs_three_round_trips_on_postgres(
    client: TestClient, sync_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BEGIN, one statement (the delivery, the connection with its tags, the history row and
    its feed event: data-modifying CTEs, ``inbox.STORE_NEW_CONNECTION``), COMMIT; the feed's
    NOTIFY is sent after the commit, apart (make bench: every round trip is a loopback send in
    libpq, the receiver's largest cost)."""
    if sync_engine.dialect.name != "postgresql":
        pytest.skip("round trips are Postgres's; SQLite batches its trips to the writer thread")
    import psycopg

    # What each connection was sent (background tasks use other pooled connections).
    sent: dict[int, list[str]] = {}
    execute = psycopg.AsyncCursor.execute

    async def counted(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        text_ = query.decode() if isinstance(query, bytes) else str(query)
        sent.setdefault(id(self.connection), []).append(text_.split(None, 1)[0].upper())
        return await execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", counted)
    body = auth_body(connection_id="three-trips", tags={"end_user_id": "u-3", "team": "x"})
    answer = post(client, body).json()
    assert answer["status"] == "applied"
    monkeypatch.undo()
    transactions = [  # from BEGIN to COMMIT (a NOTIFY may follow on the same connection)
        statements[statements.index("BEGIN") : statements.index("COMMIT") + 1]
        for statements in sent.values()
        if "BEGIN" in statements
    ]
    assert transactions == [["BEGIN", "WITH", "COMMIT"]]
    assert indexed_tags(sync_engine) == {"end_user_id": "u-3", "team": "x"}
    pk = connection_row(sync_engine, "three-trips").id
    [event] = feed(sync_engine)
    assert (event.type, event.delivery_id, event.connection_pk) == (
        "connection.created",
        answer["delivery_id"],
        pk,
    )
    [entry] = history(sync_engine)
    assert (entry.action, entry.delivery_id, entry.connection_pk) == (
        "creation",
        answer["delivery_id"],
        pk,
    )


# Auth deliveries in an order that sends each down one of the inbox's paths on Postgres.
_PATHS = (
    # A new connection, in one statement (with an owner, tags, one too long to index).
    auth_body(
        connection_id="c-new",
        tags={"end_user_id": "u1", "organization_id": "o1", "team": "x", "k" * 80: "long"},
        end_user={"id": "u1", "email": "u1@example.com", "displayName": "U One"},
    ),
    auth_body(operation="override", connection_id="c-override"),  # new, in one statement
    auth_body(operation="refresh", connection_id="c-refresh"),  # new, in one statement
    auth_body(operation="deletion", connection_id="c-gone"),  # a tombstone, in one statement
    # New but broken: two feed events, so the rules write it.
    auth_body(operation="refresh", success=False, connection_id="c-broken"),
    # The connection is stored: the statement stores the delivery, the rules apply it.
    auth_body(connection_id="c-new", tags={"team": "y"}),
    auth_body(operation="refresh", success=False, connection_id="c-new"),
    auth_body(operation="override", connection_id="c-gone"),  # deleted: history only
    auth_body(operation="creation", success=False, connection_id="c-none"),  # no connection
    auth_body(connection_id="c-new", tags={"end_user_id": "u1", "organization_id": "o1"}),
)


def _written(engine: Engine) -> dict[str, Any]:
    """Every row the deliveries wrote, without generated IDs and with times as set / not set."""

    def plain(row: Any, *drop: str) -> dict[str, Any]:
        return {
            name: (value is not None) if name.endswith("_at") or name == "error_since" else value
            for name, value in row._mapping.items()
            if name not in ("id", *drop)
        }

    connections = {row.id: row.connection_id for row in all_connections(engine).values()}
    events = feed(engine)
    for event in events:
        for name in ("created_at", "updated_at", "deleted_at"):
            event.connection[name] = event.connection[name] is not None
        if event.connection["error"] is not None:
            event.connection["error"]["since"] = event.connection["error"]["since"] is not None
    return {
        "connections": sorted((plain(row) for row in all_connections(engine).values()), key=repr),
        "tags": indexed_tags(engine),
        "history": [
            {**plain(row, "connection_pk"), "connection": connections[row.connection_pk]}
            for row in history(engine)
        ],
        "feed": [
            {**plain(row, "connection_pk"), "connection_pk": connections[row.connection_pk]}
            for row in events
        ],
        "deliveries": [plain(row, "dedupe_key") for row in deliveries_rows(engine)],
    }


def deliveries_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT * FROM deliveries ORDER BY id")))


def test_the_one_statement_path_writes_what_the_rules_write(
    client: TestClient, sync_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres's shortcut for a new connection (``inbox.STORE_NEW_CONNECTION``) against the
    rules alone, delivery by delivery: the same answers, and after each one the same
    connections, tags, history, feed events and deliveries, whichever path it took."""
    if sync_engine.dialect.name != "postgresql":
        pytest.skip("the one-statement path is Postgres's")
    # Per delivery: True, created in one statement; False, the statement found the connection
    # stored and left the delivery to the rules; None, the rules' path alone.
    taken: list[bool | None] = []
    shortcut = inbox.store_new_connection

    async def noted(*args: Any, **kwargs: Any) -> Any:
        result = await shortcut(*args, **kwargs)
        taken.append(None if result is None else result[1])
        return result

    def deliver() -> tuple[list[str], list[dict[str, Any]]]:
        """Each delivery's answer, and every row written once it is answered."""
        answers = []
        written = []
        for body in _PATHS:
            answers.append(post(client, body).json()["status"])
            written.append(_written(sync_engine))
        return answers, written

    with monkeypatch.context() as patch:
        patch.setattr(inbox, "store_new_connection", noted)
        answers, with_shortcut = deliver()
    # Four new connections in one statement, three deliveries for stored connections through
    # it to the rules. Never tried: the failed creation (no connection) and the two failed
    # refreshes (a new connection that is broken makes two feed events).
    assert taken == [True, True, True, True, None, False, None, False, None, False]
    assert answers == ["applied"] * 8 + ["recorded", "applied"]

    empty_tables(sync_engine)
    with monkeypatch.context() as patch:
        patch.setattr(inbox, "as_new_connection", lambda *args, **kwargs: None)
        assert deliver() == (answers, with_shortcut)
