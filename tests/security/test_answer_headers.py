"""Issue 13, point 6: every answer carries nosniff; nothing under /v1/ may be cached."""

from __future__ import annotations

from starlette.testclient import TestClient

from tests.webhooks.helpers import auth_body, signed_headers


def test_answers_carry_nosniff_and_v1_answers_no_store(
    client: TestClient, auth_headers: dict[str, str]
) -> None:
    # Each with the status it must have: an error answer carries the headers too.
    v1 = [
        (200, client.get("/v1/connections", headers=auth_headers)),
        (401, client.get("/v1/connections")),
        (404, client.get("/v1/connections/nobody", headers=auth_headers)),
        (400, client.get("/v1/connections?bogus=1", headers=auth_headers)),
        (200, client.get("/v1/end-users/u/summary", headers=auth_headers)),
        (405, client.post("/v1/connections", headers=auth_headers)),
    ]
    for status, answer in v1:
        assert answer.status_code == status, answer.request.url
        assert answer.headers["cache-control"] == "no-store", answer.request.url
        assert answer.headers["x-content-type-options"] == "nosniff"
    body = auth_body()
    others = [
        (200, client.get("/healthz")),
        (200, client.get("/openapi.json")),
        (404, client.get("/nowhere")),
        (200, client.post("/webhooks/nango", content=body, headers=signed_headers(body))),
        (200, client.get("/metrics", headers=auth_headers)),
    ]
    for status, answer in others:
        assert answer.status_code == status, answer.request.url
        assert answer.headers["x-content-type-options"] == "nosniff", answer.request.url
