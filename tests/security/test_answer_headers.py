"""Issue 13, point 6: every answer carries nosniff; nothing under /v1/ may be cached."""

from __future__ import annotations

from starlette.testclient import TestClient

from tests.webhooks.helpers import auth_body, signed_headers


def test_answers_carry_nosniff_and_v1_answers_no_store(
    client: TestClient, auth_headers: dict[str, str]
) -> None:
    v1 = [
        client.get("/v1/connections", headers=auth_headers),
        client.get("/v1/connections"),  # 401
        client.get("/v1/connections/nobody", headers=auth_headers),  # 404
        client.get("/v1/connections?bogus=1", headers=auth_headers),  # 400
        client.get("/v1/end-users/u/summary", headers=auth_headers),
        client.post("/v1/connections", headers=auth_headers),  # 405
    ]
    for answer in v1:
        assert answer.headers["cache-control"] == "no-store", answer.request.url
        assert answer.headers["x-content-type-options"] == "nosniff"
    body = auth_body()
    others = [
        client.get("/healthz"),
        client.get("/openapi.json"),
        client.get("/nowhere"),
        client.post("/webhooks/nango", content=body, headers=signed_headers(body)),
        client.get("/metrics", headers=auth_headers),
    ]
    for answer in others:
        assert answer.headers["x-content-type-options"] == "nosniff", answer.request.url
