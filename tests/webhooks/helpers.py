"""Signing and sending webhooks the way Nango does."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from tests.conftest import TEST_SIGNING_KEY

VECTORS_FILE = Path(__file__).resolve().parents[1] / "fixtures" / "webhook-vectors.json"
VECTORS: list[dict[str, str]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
BY_NAME = {vector["name"]: vector for vector in VECTORS}


def sign(body: bytes, key: str = TEST_SIGNING_KEY) -> str:
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def legacy_sign(body: bytes, key: str = TEST_SIGNING_KEY) -> str:
    return hashlib.sha256(key.encode() + body).hexdigest()


def nango_json(payload: Any) -> bytes:
    """Serialise like Nango: compact, keys sorted at every level, non-ASCII unescaped."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def signed_headers(body: bytes, key: str = TEST_SIGNING_KEY) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": "nango/0.71.4 (test)",
        "x-nango-hmac-sha256": sign(body, key),
    }


def auth_body(
    *,
    operation: str = "creation",
    success: bool = True,
    connection_id: str = "conn-1",
    integration: str = "github",
    environment: str = "prod",
    tags: dict[str, str] | None = None,
    end_user: dict[str, Any] | None = None,
    error: dict[str, str] | None = None,
) -> bytes:
    payload: dict[str, Any] = {
        "from": "nango",
        "type": "auth",
        "connectionId": connection_id,
        "providerConfigKey": integration,
        "provider": integration,
        "authMode": "OAUTH2",
        "environment": environment,
        "operation": operation,
        "success": success,
    }
    if tags is not None:
        payload["tags"] = tags
    if end_user is not None:
        payload["endUser"] = end_user
    if error is not None:
        payload["error"] = error
    elif not success:
        payload["error"] = {"type": "refresh_token_external_error", "description": "broken"}
    return nango_json(payload)


def sync_body(
    *,
    success: bool = True,
    connection_id: str = "conn-1",
    integration: str = "github",
    model: str = "Issue",
    error: str = "HTTP 500 from GitHub",
) -> bytes:
    """A sync webhook as Nango sends it (a failed one carries an error)."""
    payload: dict[str, Any] = {
        "type": "sync",
        "from": "nango",
        "connectionId": connection_id,
        "providerConfigKey": integration,
        "syncName": "issues",
        "model": model,
        "syncType": "INCREMENTAL",
        "success": success,
    }
    if not success:
        payload["error"] = {"type": "script_http_error", "description": error}
    return nango_json(payload)
