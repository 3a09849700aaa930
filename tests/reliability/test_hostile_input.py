"""Fuzzing the webhook path through the app: verification, size limit, parsing, storing, state.

Every body is validly signed, so each one reaches the parser and the state machine. The oracle
is independent of the app: a body is JSON when it is UTF-8 and ``json.loads`` (integers of any
length) accepts it. Invariants: no 500 and no unhandled exception (the client re-raises any),
no traceback in any answer, every JSON body is answered 200 and stored byte for byte (by its
SHA-256), every other body 400, and nothing is ever marked failed by the state machine.
Headers are fuzzed too: a random signature header is 401, whatever its bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from app.application import create_app
from app.settings import Settings
from tests.conftest import TEST_API_KEY, TEST_NANGO_SECRET, TEST_SECRET, TEST_SIGNING_KEY
from tests.reliability.conftest import LONG, postgres_pass_only
from tests.webhooks.helpers import sign

pytestmark = postgres_pass_only(
    "runs in the TEST_DB=postgres pass only (Postgres is the stricter store: NUL, surrogates)"
)

EXAMPLES = 1500 if LONG else 80
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def fuzz_client(database_url: str) -> Iterator[TestClient]:
    app_settings = Settings(
        database_url=database_url,
        secret_key=TEST_SECRET,
        nango_webhook_signing_keys=TEST_SIGNING_KEY,
        registry_api_keys=TEST_API_KEY,
        nango_secret_key=TEST_NANGO_SECRET,
        nango_host="http://nango.test",
        webhook_max_body_bytes=MAX_BODY,
        _env_file=None,
    )
    with TestClient(create_app(app_settings), raise_server_exceptions=True) as client:
        yield client


def is_json(body: bytes) -> bool | None:
    """True or False; None when nesting reaches Python's recursion limit.

    How deep the parser gets depends on the stack already in use, which differs between this
    thread and the app's, so near the limit either answer (200 stored, 400 not stored) is right.
    """
    try:
        json.loads(body.decode("utf-8"), parse_int=Decimal)
    except RecursionError:
        return None
    except (UnicodeDecodeError, ValueError):
        return False
    return True


def stored(engine: Engine, body: bytes) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT body FROM deliveries WHERE dedupe_key = :key"),
                {"key": hashlib.sha256(body).hexdigest()},
            )
        )


def check(
    client: TestClient, engine: Engine, body: bytes, headers: dict[str, Any] | None = None
) -> int:
    signed = headers is None
    response = client.post(
        "/webhooks/nango",
        content=body,
        headers=headers or {"content-type": "application/json", "x-nango-hmac-sha256": sign(body)},
    )
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    if response.status_code != 200:
        assert set(response.json()["error"]) >= {"code", "message"}
    if not signed:
        return response.status_code
    verdict = is_json(body)
    if verdict is None:
        verdict = response.status_code == 200
    if len(body) > MAX_BODY:
        assert response.status_code == 413
    elif verdict:
        assert response.status_code == 200, (response.text, body[:200])
        assert response.json()["status"] in {"recorded", "applied", "duplicate"}, response.text
        rows = stored(engine, body)
        assert len(rows) == 1
        assert rows[0].body.encode("utf-8") == body
    else:
        assert response.status_code == 400, (response.text, body[:200])
        assert response.json()["error"]["code"] == "invalid_body"
        assert not stored(engine, body)
    return response.status_code


TRICKY = st.sampled_from(
    ["", "\x00", "a\x00b", "\ud800", "\udfff", "\ud83d\ude00", "é", "\u2028", "\ufeff", " ", "中"]
)
STRINGS = st.one_of(TRICKY, st.text(max_size=40), st.text(st.characters(codec="utf-8")))
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | STRINGS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(STRINGS, children, max_size=5)
    ),
    max_leaves=30,
)
AUTH_KEYS = st.sampled_from(
    [
        "type",
        "operation",
        "success",
        "connectionId",
        "providerConfigKey",
        "provider",
        "authMode",
        "environment",
        "tags",
        "endUser",
        "error",
        "from",
        "syncName",
        "model",
        "responseResults",
        "payload",
    ]
)
AUTH_LIKE = st.fixed_dictionaries(
    {"type": st.sampled_from(["auth", "sync", "forward", "async_action", "other"]) | JSON_VALUES},
    optional={
        "operation": st.sampled_from(["creation", "override", "refresh", "deletion"]) | JSON_VALUES,
        "success": st.booleans() | JSON_VALUES,
        "connectionId": STRINGS | JSON_VALUES,
        "providerConfigKey": STRINGS | JSON_VALUES,
        "environment": st.sampled_from(["prod", "dev"]) | JSON_VALUES,
        "tags": st.dictionaries(STRINGS, STRINGS | JSON_VALUES, max_size=12) | JSON_VALUES,
        "endUser": st.dictionaries(
            st.sampled_from(["endUserId", "endUserEmail", "organizationId", "tags"]), JSON_VALUES
        )
        | JSON_VALUES,
        "error": JSON_VALUES,
    },
).flatmap(lambda base: st.dictionaries(AUTH_KEYS, JSON_VALUES, max_size=4).map(base.__or__))


def serialise(value: Any, ensure_ascii: bool) -> bytes:
    # Lone surrogates cannot be UTF-8: with ensure_ascii they become \\ud800 escapes (valid
    # JSON), without it they become invalid UTF-8 bytes (not JSON).
    return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


@FUZZ
@given(body=st.binary(max_size=2048))
def test_random_bytes(fuzz_client: TestClient, sync_engine: Engine, body: bytes) -> None:
    check(fuzz_client, sync_engine, body)


@FUZZ
@given(value=JSON_VALUES, ensure_ascii=st.booleans())
def test_random_json_documents(
    fuzz_client: TestClient, sync_engine: Engine, value: Any, ensure_ascii: bool
) -> None:
    check(fuzz_client, sync_engine, serialise(value, ensure_ascii))


@FUZZ
@given(value=AUTH_LIKE, ensure_ascii=st.booleans())
def test_auth_like_bodies_with_fields_of_every_type(
    fuzz_client: TestClient, sync_engine: Engine, value: Any, ensure_ascii: bool
) -> None:
    check(fuzz_client, sync_engine, serialise(value, ensure_ascii))


@FUZZ
@given(
    depth=st.integers(min_value=1, max_value=3000),
    opener=st.sampled_from(["[", '{"a":', '{"type":"auth","tags":']),
)
def test_deep_nesting(
    fuzz_client: TestClient, sync_engine: Engine, depth: int, opener: str
) -> None:
    closer = "]" if opener == "[" else "}"
    check(fuzz_client, sync_engine, (opener * depth + "1" + closer * depth).encode())


@FUZZ
@example(digits=5000, field="connectionId", exponent="")
@given(
    digits=st.integers(min_value=1, max_value=6000),
    field=st.sampled_from(["connectionId", "success", "environment", "tags", "x"]),
    exponent=st.sampled_from(["", "e999999", "E-999999", ".5e400"]),
)
def test_huge_numbers(
    fuzz_client: TestClient, sync_engine: Engine, digits: int, field: str, exponent: str
) -> None:
    number = "9" * digits + exponent
    body = f'{{"type":"auth","operation":"creation","{field}":{number}}}'.encode()
    check(fuzz_client, sync_engine, body)


@FUZZ
@given(
    keys=st.lists(st.sampled_from(["type", "connectionId", "success", "tags"]), min_size=2),
    values=st.lists(JSON_VALUES, min_size=2),
)
def test_duplicate_keys(
    fuzz_client: TestClient, sync_engine: Engine, keys: list[str], values: list[Any]
) -> None:
    members = ",".join(
        f"{json.dumps(key)}:{json.dumps(value)}" for key, value in zip(keys, values, strict=False)
    )
    check(fuzz_client, sync_engine, ("{" + members + "}").encode())


@FUZZ
@given(
    body=st.binary(max_size=256),
    signature=st.binary(max_size=100),
    legacy=st.none() | st.binary(max_size=100),
)
def test_random_signature_headers_are_401(
    fuzz_client: TestClient, sync_engine: Engine, body: bytes, signature: bytes, legacy: Any
) -> None:
    headers: dict[str, Any] = {"x-nango-hmac-sha256": signature}
    if legacy is not None:
        headers["x-nango-signature"] = legacy
    assert check(fuzz_client, sync_engine, body, headers) == 401


def test_nul_bytes_inside_json_strings_are_refused_as_not_json(
    fuzz_client: TestClient, sync_engine: Engine
) -> None:
    # A raw NUL is not allowed in a JSON string (RFC 8259 section 7); the escape \\u0000 is.
    assert check(fuzz_client, sync_engine, b'{"type":"auth","connectionId":"a\x00b"}') == 400
    assert check(fuzz_client, sync_engine, b'{"type":"auth","connectionId":"a\\u0000b"}') == 200
