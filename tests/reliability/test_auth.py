"""Nobody without the key gets in: every ``/v1/`` route, and how keys are compared.

Routes are read from the app itself, so every route added later is covered without editing
this file. Keys are ``REGISTRY_API_KEYS`` (full access) and rows of ``api_keys`` (inserted here
with ``hash_key``, as ``nango-registry api-keys create`` stores them). Runs on both databases.
"""

from __future__ import annotations

import ast
import inspect
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from app.api import keys
from app.api.keys import hash_key, require_api_key
from app.application import create_app
from app.db.tables import ApiKeyTable
from app.db.types import utcnow
from app.settings import Settings
from tests import secret_scan
from tests.conftest import TEST_API_KEY

READ_ONLY_KEY = "nreg_read-only-key-for-auth-tests-9f3b1c7a"
REVOKED_KEY = "nreg_revoked-key-for-auth-tests-4d8e2a6b"
WRONG_KEY = TEST_API_KEY[:-1] + ("0" if TEST_API_KEY[-1] != "0" else "1")
WRITES = {"POST", "PUT", "PATCH", "DELETE"}
PARAM = re.compile(r"{([^}:]+)(?::([^}]+))?}")
SAMPLE = {"int": "1", "uuid": str(uuid.UUID(int=1)), "float": "1.0", "segment": "x", "str": "x"}


def v1_endpoints() -> list[tuple[str, str]]:
    """Every (method, sample path) the app serves under /v1/, from its own routes."""
    from app.api.openapi import handlers
    from app.application import ROUTES

    endpoints = []
    for route, method, _ in handlers(ROUTES):
        path = PARAM.sub(lambda m: SAMPLE.get(m.group(2) or "str", "x"), route.path)
        if path.startswith("/v1/"):
            endpoints.append((method.upper(), path))
    return endpoints


@pytest.fixture
def keyed(settings: Settings, sync_engine: Engine) -> Iterator[TestClient]:
    secret_scan.register_secret(READ_ONLY_KEY, REVOKED_KEY, WRONG_KEY)
    with Session(sync_engine) as session:
        session.add(ApiKeyTable(name="reader", key_hash=hash_key(READ_ONLY_KEY), read_only=True))
        session.add(
            ApiKeyTable(name="revoked", key_hash=hash_key(REVOKED_KEY), revoked_at=utcnow())
        )
        session.commit()
    app = create_app(settings)

    async def probe(request: Request) -> JSONResponse:
        principal = await require_api_key(request, write=request.method != "GET")
        return JSONResponse({"name": principal.name, "read_only": principal.read_only})

    # A probe route exercises require_api_key itself, whatever /v1/ routes this build has.
    app.router.routes.append(Route("/_auth_probe", probe, methods=["GET", "POST"]))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(response: Any, status: int) -> None:
    assert response.status_code == status, (response.request.url, response.text)
    error = response.json()["error"]
    assert set(error) >= {"code", "message"}
    assert TEST_API_KEY not in response.text
    assert READ_ONLY_KEY not in response.text


REFUSED = [
    ("no key", {}),
    ("empty bearer", {"Authorization": "Bearer "}),
    ("other scheme", {"Authorization": f"Basic {TEST_API_KEY}"}),
    ("wrong key", bearer(WRONG_KEY)),
    ("revoked key", bearer(REVOKED_KEY)),
    ("hash as key", bearer(hash_key(TEST_API_KEY))),
]


@pytest.mark.parametrize(("case", "headers"), REFUSED, ids=[case for case, _ in REFUSED])
def test_probe_refuses_without_a_valid_key(
    keyed: TestClient, case: str, headers: dict[str, str]
) -> None:
    for method in ("GET", "POST"):
        response = keyed.request(method, "/_auth_probe", headers=headers)
        assert_error(response, 401)
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_probe_read_only_key_reads_but_cannot_write(keyed: TestClient) -> None:
    assert keyed.get("/_auth_probe", headers=bearer(READ_ONLY_KEY)).json() == {
        "name": "reader",
        "read_only": True,
    }
    assert_error(keyed.post("/_auth_probe", headers=bearer(READ_ONLY_KEY)), 403)
    assert keyed.post("/_auth_probe", headers=bearer(TEST_API_KEY)).json()["read_only"] is False


def test_every_v1_route_refuses_missing_wrong_revoked_and_read_only_keys(
    keyed: TestClient,
) -> None:
    endpoints = v1_endpoints()
    if not endpoints:
        pytest.skip("this build has no /v1/ routes yet (the lookup API branch adds them)")
    for method, path in endpoints:
        for _case, headers in REFUSED:
            assert_error(keyed.request(method, path, headers=headers, json={}), 401)
        # An accepted stream never ends: an unknown parameter makes it a 400, after the key.
        control = path + "?not_a_parameter=1" if path.endswith("/stream") else path
        response = keyed.request(method, control, headers=bearer(READ_ONLY_KEY), json={})
        # Subscriptions are managed with a full-access key only, reads too: they say where
        # connection data is sent (issue 16).
        if method in WRITES or path.startswith("/v1/subscriptions"):
            assert_error(response, 403)
        else:
            # The control: the same key is valid, so a refusal above was about the key.
            assert response.status_code not in {401, 403}, (method, path, response.text)


def test_keys_are_looked_up_by_their_sha256_digest_only(
    keyed: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guess never meets a key: only its SHA-256 is looked up, among the keys' digests.

    A dictionary lookup by digest compares digests, and the digest of a guess shares nothing
    with the digest of the key however close the guess is, so no timing says how close it is.
    """
    looked_up: list[str] = []
    original = keys.ApiKeyCache.find

    async def spy(self: keys.ApiKeyCache, digest: str) -> keys.Principal | None:
        looked_up.append(digest)
        return await original(self, digest)

    monkeypatch.setattr(keys.ApiKeyCache, "find", spy)
    # A guess that matches all but the last character of the real key.
    assert keyed.get("/_auth_probe", headers=bearer(WRONG_KEY)).status_code == 401
    assert keyed.get("/_auth_probe", headers=bearer(TEST_API_KEY)).status_code == 200
    assert looked_up == [hash_key(WRONG_KEY), hash_key(TEST_API_KEY)]
    for digest in looked_up:
        assert re.fullmatch(r"[0-9a-f]{64}", digest), digest
    assert set(keys.configured_key_hashes(keyed.app.state.registry.settings)) == {  # type: ignore[attr-defined]
        hash_key(TEST_API_KEY)
    }


def test_auth_source_never_compares_a_raw_key_with_equality() -> None:
    tree = ast.parse(inspect.getsource(keys))
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(
            isinstance(op, ast.Eq | ast.NotEq) for op in node.ops
        ):
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            # Only the auth scheme and bookkeeping are compared with ==; keys are looked up by
            # digest (see above).
            assert names <= {"scheme", "row", "self", "found", "configured"}, ast.unparse(node)
