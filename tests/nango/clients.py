"""The real NangoClient wired to a fake Nango, and the reconcile route, for this package's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from pydantic import SecretStr
from starlette.testclient import TestClient

from app.nango.client import NangoClient
from tests.fakes.nango import DEFAULT_SECRET, FakeNango

# Waits for tests: Nango rounds Retry-After down, the client adds this much (1 s in production).
FAST_RATE_LIMITS = {"rate_limit_margin_seconds": 0.01, "rate_limit_max_wait_seconds": 0.5}


@asynccontextmanager
async def client_for(
    fake: FakeNango,
    *,
    secret: str | None = DEFAULT_SECRET,
    retries: int = 2,
    timeout: float = 2.0,
    **options: Any,
) -> AsyncIterator[NangoClient]:
    async with httpx2.AsyncClient(transport=fake.transport()) as http:
        yield NangoClient(
            http=http,
            host="http://nango.test",
            secret_key=SecretStr(secret) if secret is not None else None,
            timeout_seconds=timeout,
            max_retries=retries,
            **{"backoff_seconds": 0.01, **FAST_RATE_LIMITS, **options},
        )


def reconcile_over_http(api: TestClient, headers: dict[str, str]) -> dict[str, int]:
    """``POST /v1/reconcile``, which must succeed; its counts."""
    response = api.post("/v1/reconcile", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["environment"] == "prod"
    counts: dict[str, int] = response.json()["counts"]
    return counts
