"""Issue 13, point 5: headers are not ambiguous.

Two Authorization headers, or two signature headers, are refused whichever comes first (never
"first one wins"), and no answer redirects to the Host a client chose. Raw sockets: most HTTP
clients merge or refuse repeated headers before they leave.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import TEST_API_KEY
from tests.security.attacker import BEARER, serve
from tests.webhooks.helpers import auth_body, sign


def test_duplicated_credentials_and_host_redirects(tmp_path: Path, database_url: str) -> None:
    body = auth_body(connection_id="dup-1")
    good, bad = sign(body), "0" * 64
    with serve(tmp_path, database_url) as server:
        for first, second in (
            (BEARER, "Authorization: Bearer wrong"),
            ("Authorization: Bearer wrong", BEARER),
            (BEARER, BEARER),
        ):
            answer = server.request("GET", "/v1/connections", first, second)
            assert answer.status == 400, answer
            assert answer.json()["error"]["code"] == "duplicate_header"
            assert TEST_API_KEY not in answer.body.decode()
        for first, second in ((good, bad), (bad, good), (good, good)):
            answer = server.request(
                "POST",
                "/webhooks/nango",
                f"X-Nango-Hmac-Sha256: {first}",
                f"X-Nango-Hmac-Sha256: {second}",
                body=body,
            )
            assert answer.status == 400, answer
        # One of each is fine.
        single = server.request(
            "POST", "/webhooks/nango", f"X-Nango-Hmac-Sha256: {good}", body=body
        )
        assert single.status == 200
        for path in ("/v1/connections/", "/healthz/", "/v1/end-users/u/summary/"):
            answer = server.request("GET", path, "Host: evil.example", BEARER)
            assert answer.status == 404, (path, answer)
            assert "location" not in answer.headers
        metrics = server.request("GET", "/metrics", BEARER).body.decode()
    assert 'nango_registry_auth_failures_total{reason="duplicate_header"} 3.0' in metrics
    assert 'nango_registry_webhook_signature_failures_total{reason="duplicate_header"} 3.0' in (
        metrics
    )
