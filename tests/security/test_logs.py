"""Issue 13, point 8: logs at LOG_LEVEL=debug, as an operator tracing an attack reads them.

The service's own debug lines appear; no SQL, parameters, bodies or key hashes from any
driver or library do. Access lines name the client (after trusted proxy headers only) and
its user agent; failed authentications are counted by reason.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from app.api.keys import hash_key
from app.db.tables import ApiKeyTable
from tests.security.attacker import BEARER, serve
from tests.webhooks.helpers import auth_body, sign

MARKER = "marker-in-the-body-7d1f"
SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b.*\b(FROM|INTO|SET)\b|%\(\w+\)s|:key_hash")


def test_debug_logs_hold_no_sql_and_trace_failed_authentications(
    tmp_path: Path, database_url: str, sync_engine: Engine
) -> None:
    with Session(sync_engine) as session:
        session.add(ApiKeyTable(name="dashboard", key_hash=hash_key("stored-key-secret")))
        session.commit()
    body = auth_body(connection_id="logged-1", tags={"end_user_email": f"{MARKER}@example.com"})
    settings = {"LOG_LEVEL": "debug", "FORWARDED_ALLOW_IPS": "127.0.0.1"}
    with serve(tmp_path, database_url, **settings) as server:
        webhook = server.request(
            "POST", "/webhooks/nango", f"X-Nango-Hmac-Sha256: {sign(body)}", body=body
        )
        assert webhook.status == 200
        stored = "Authorization: Bearer stored-key-secret"
        assert server.request("GET", "/v1/connections", stored).status == 200
        agent = "User-Agent: curl/8.0 (attacker)"
        forwarded = "X-Forwarded-For: 203.0.113.9"
        for headers in ((agent, forwarded), (agent, "Authorization: Bearer guess"), (agent,)):
            assert server.request("GET", "/v1/connections", *headers).status == 401
        assert server.request("GET", "/v1/connections", "Authorization: Basic x").status == 401
        metrics = server.request("GET", "/metrics", BEARER).body.decode()
    # Read once the server has stopped: an access line is written after its answer is sent.
    text = server.text()
    lines = server.lines()

    assert any(line.get("event") == "api_keys_loaded" for line in lines), "no debug line"
    for raw in text.splitlines():
        assert not SQL.search(raw), raw
        assert MARKER not in raw
        assert hash_key("stored-key-secret") not in raw
        assert "stored-key-secret" not in raw
    refused = [line for line in lines if line.get("auth_failure")]
    assert [line["auth_failure"] for line in refused] == [
        "missing",
        "unknown_key",
        "missing",
        "malformed",
    ]
    # The forwarding proxy (127.0.0.1) is trusted: the client is who it says it forwards.
    assert refused[0]["client"] == "203.0.113.9"
    assert refused[1]["client"] == "127.0.0.1"
    assert refused[0]["user_agent"] == "curl/8.0 (attacker)"
    for reason, count in (("missing", 2), ("unknown_key", 1), ("malformed", 1)):
        assert f'nango_registry_auth_failures_total{{reason="{reason}"}} {count}.0' in metrics


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(
    tmp_path: Path, database_url: str
) -> None:
    with serve(tmp_path, database_url, FORWARDED_ALLOW_IPS="10.9.9.9") as server:
        answer = server.request("GET", "/v1/connections", "X-Forwarded-For: 203.0.113.9")
        assert answer.status == 401
    lines = server.lines()  # once stopped: the access line follows the answer
    access = [line for line in lines if line.get("auth_failure")]
    assert access[0]["client"] == "127.0.0.1"
