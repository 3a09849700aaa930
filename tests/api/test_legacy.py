"""POST /v1/legacy/auth-hmac: the HMAC of the legacy frontend flow."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient


def test_legacy_hmac_matches_the_facts_vector(
    make_client: Any, auth_headers: dict[str, str]
) -> None:
    api = make_client(nango_legacy_hmac_key="my-hmac-key")
    response = api.post(
        "/v1/legacy/auth-hmac",
        headers=auth_headers,
        json={"integration_id": "github", "connection_id": "user-123"},
    )
    assert response.status_code == 200
    assert response.json() == {
        "hmac": "288fab16636850549d832b71437aa742468d6d2cbbd678697cb3356243b1ce2e"
    }
    response = api.post(
        "/v1/legacy/auth-hmac", headers=auth_headers, json={"integration_id": "github"}
    )
    assert response.status_code == 400


def test_legacy_hmac_is_404_without_a_key(api: TestClient, auth_headers: dict[str, str]) -> None:
    response = api.post(
        "/v1/legacy/auth-hmac",
        headers=auth_headers,
        json={"integration_id": "github", "connection_id": "user-123"},
    )
    assert response.status_code == 404
