"""Verification is total: any header bytes and any body give a key or None, a 401, never a 500.

The oracle is computed here with ``hmac``/``hashlib``, independently of ``app.webhooks``. Two
normalisations are part of the contract and are allowed for explicitly: optional whitespace around
a header value is not part of the value (RFC 9110 5.5), and hex digits are case-insensitive (the
same MAC, spelled differently).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from app.application import create_app
from app.settings import SigningKey
from app.webhooks.signature import verify_signature
from tests.conftest import TEST_SIGNING_KEY
from tests.webhooks.raw_asgi import raw_request

PURE = settings(max_examples=1000, deadline=None)
HTTP = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ROTATED_KEY = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
BODY_LIMIT = 1024  # the smallest WEBHOOK_MAX_BODY_BYTES, so generated bodies can exceed it

bodies = st.binary(max_size=300)
raw_keys = st.binary(min_size=1, max_size=48)
# Header values as a sender or attacker could shape them: anything at all, hex-like text of
# every length and case, blanks, and bytes outside ASCII.
header_values = st.one_of(
    st.binary(max_size=96),
    st.text(alphabet="0123456789abcdefABCDEF \t", max_size=80).map(str.encode),
    st.sampled_from([b"", b" ", b"\t", b"\xff" * 64, b"\x00" * 64, "é".encode() * 32]),
)
optional_headers = st.none() | header_values
signing_keys = st.lists(
    st.builds(SigningKey, key=raw_keys, environment=st.none() | st.sampled_from(["dev", "prod"])),
    max_size=4,
)


def hmac_hex(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).hexdigest().encode()


def legacy_hex(key: bytes, body: bytes) -> bytes:
    return hashlib.sha256(key + body).hexdigest().encode()


def same_value(mutated: bytes, original: bytes) -> bool:
    """True when ``mutated`` is ``original`` up to surrounding whitespace and hex case."""
    return mutated.strip().lower() == original


# -- the pure function -------------------------------------------------------------------------


@PURE
@given(
    body=bodies,
    hmac_header=optional_headers,
    legacy_header=optional_headers,
    keys=signing_keys,
    accept_legacy=st.booleans(),
)
def test_any_input_gives_a_configured_key_or_none(
    body: bytes,
    hmac_header: bytes | None,
    legacy_header: bytes | None,
    keys: list[SigningKey],
    accept_legacy: bool,
) -> None:
    result = verify_signature(
        body=body,
        hmac_header=hmac_header,
        legacy_header=legacy_header,
        keys=keys,
        accept_legacy=accept_legacy,
    )
    assert result is None or any(result is key for key in keys)
    if result is not None:
        # Whatever verified must really be a signature of this body by that key.
        if hmac_header is not None:
            assert same_value(hmac_header, hmac_hex(result.key, body))
        else:
            assert accept_legacy
            assert legacy_header is not None
            assert same_value(legacy_header, legacy_hex(result.key, body))


@PURE
@given(body=bodies, keys=st.lists(raw_keys, min_size=1, max_size=4), data=st.data())
def test_a_correct_hmac_always_verifies_with_the_key_that_made_it(
    body: bytes, keys: list[bytes], data: st.DataObject
) -> None:
    signer = data.draw(st.sampled_from(keys))
    configured = [SigningKey(key=key) for key in keys]
    result = verify_signature(
        body=body,
        hmac_header=hmac_hex(signer, body),
        legacy_header=data.draw(optional_headers),
        keys=configured,
        accept_legacy=data.draw(st.booleans()),
    )
    assert result is not None
    assert result.key == signer


@PURE
@given(
    body=bodies.filter(bool),
    key=raw_keys,
    data=st.data(),
    legacy=st.booleans(),
)
def test_any_bit_flip_in_the_body_is_rejected(
    body: bytes, key: bytes, data: st.DataObject, legacy: bool
) -> None:
    position = data.draw(st.integers(0, len(body) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = bytearray(body)
    tampered[position] ^= 1 << bit
    signature = legacy_hex(key, body) if legacy else hmac_hex(key, body)
    result = verify_signature(
        body=bytes(tampered),
        hmac_header=None if legacy else signature,
        legacy_header=signature if legacy else None,
        keys=[SigningKey(key=key)],
        accept_legacy=True,
    )
    assert result is None


@PURE
@given(body=bodies, key=raw_keys, data=st.data(), legacy=st.booleans())
def test_any_changed_byte_in_the_signature_is_rejected(
    body: bytes, key: bytes, data: st.DataObject, legacy: bool
) -> None:
    signature = legacy_hex(key, body) if legacy else hmac_hex(key, body)
    position = data.draw(st.integers(0, len(signature) - 1))
    change = data.draw(
        st.one_of(
            st.integers(0, 255).map(lambda byte: ("replace", byte)),
            st.integers(0, 7).map(lambda bit: ("flip", bit)),
            st.just(("cut", 0)),
            st.binary(min_size=1, max_size=4).map(lambda extra: ("extend", extra)),
        )
    )
    kind, argument = change
    mutated = bytearray(signature)
    if isinstance(argument, bytes):
        mutated[position:position] = argument  # "extend"
    elif kind == "replace":
        mutated[position] = argument
    elif kind == "flip":
        mutated[position] ^= 1 << argument
    else:
        del mutated[position]  # "cut"
    assume(not same_value(bytes(mutated), signature))
    result = verify_signature(
        body=body,
        hmac_header=None if legacy else bytes(mutated),
        legacy_header=bytes(mutated) if legacy else None,
        keys=[SigningKey(key=key)],
        accept_legacy=True,
    )
    assert result is None


@PURE
@given(body=bodies, key=raw_keys, hmac_header=optional_headers, accept_legacy=st.booleans())
def test_legacy_signature_only_when_enabled_and_hmac_header_absent(
    body: bytes, key: bytes, hmac_header: bytes | None, accept_legacy: bool
) -> None:
    assume(hmac_header is None or not same_value(hmac_header, hmac_hex(key, body)))
    configured = SigningKey(key=key)
    result = verify_signature(
        body=body,
        hmac_header=hmac_header,
        legacy_header=legacy_hex(key, body),
        keys=[configured],
        accept_legacy=accept_legacy,
    )
    # An HMAC header that is present, even empty or wrong, decides alone.
    assert result is (configured if accept_legacy and hmac_header is None else None)


@PURE
@given(body=bodies, key=raw_keys)
def test_a_signature_is_valid_only_under_its_own_header(body: bytes, key: bytes) -> None:
    configured = [SigningKey(key=key)]
    legacy_in_hmac_header = verify_signature(
        body=body,
        hmac_header=legacy_hex(key, body),
        legacy_header=None,
        keys=configured,
        accept_legacy=True,
    )
    hmac_in_legacy_header = verify_signature(
        body=body,
        hmac_header=None,
        legacy_header=hmac_hex(key, body),
        keys=configured,
        accept_legacy=True,
    )
    assert legacy_in_hmac_header is None
    assert hmac_in_legacy_header is None


# -- over HTTP ---------------------------------------------------------------------------------


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return True


@pytest.fixture
def http(make_settings: Any) -> Iterator[TestClient]:
    app = create_app(
        make_settings(
            nango_webhook_signing_keys=f"{TEST_SIGNING_KEY},{ROTATED_KEY}",
            nango_accept_legacy_signature=True,
            webhook_max_body_bytes=BODY_LIMIT,
        )
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
# Bodies shaped like Nango's, with any value in any field: they reach the state machine.
nango_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["auth", "sync", "forward", "async_action", "new"]) | json_values,
        "operation": st.sampled_from(["creation", "override", "refresh", "deletion"]) | json_values,
        "success": st.booleans() | json_values,
        "connectionId": st.text(max_size=300) | json_values,
        "providerConfigKey": st.text(max_size=300) | json_values,
        "environment": st.sampled_from(["dev", "prod"]) | json_values,
        "provider": json_values,
        "authMode": json_values,
        "tags": st.dictionaries(st.text(max_size=80), st.text(max_size=300)) | json_values,
        "endUser": json_values,
        "error": st.fixed_dictionaries({"type": json_values, "description": json_values})
        | json_values,
        "syncName": json_values,
        "model": json_values,
    },
).map(lambda payload: json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[bytes, dict[str, str], str]:
    """A body, headers and what the receiver must answer, as a sender could send them."""
    body = draw(
        st.one_of(
            st.binary(max_size=BODY_LIMIT + 300),
            nango_like,
            json_values.map(lambda value: json.dumps(value).encode()),
        )
    )
    key = draw(st.sampled_from([TEST_SIGNING_KEY, ROTATED_KEY, "not-a-configured-key"]))
    good_hmac = hmac_hex(key.encode(), body).decode()
    good_legacy = legacy_hex(key.encode(), body).decode()
    text_header = st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=70
    )
    hmac_choice = draw(st.sampled_from(["good", "upper", "garbage", "absent"]))
    legacy_choice = draw(st.sampled_from(["good", "garbage", "absent"]))
    headers = {"content-type": "application/json"}
    if hmac_choice == "good":
        headers["x-nango-hmac-sha256"] = good_hmac
    elif hmac_choice == "upper":
        headers["x-nango-hmac-sha256"] = good_hmac.upper()
    elif hmac_choice == "garbage":
        headers["x-nango-hmac-sha256"] = draw(text_header)
    if legacy_choice == "good":
        headers["x-nango-signature"] = good_legacy
    elif legacy_choice == "garbage":
        headers["x-nango-signature"] = draw(text_header)

    configured = key != "not-a-configured-key"
    if hmac_choice in {"good", "upper"}:
        verified = configured
    elif hmac_choice == "absent":
        verified = configured and legacy_choice == "good"
    else:
        verified = same_value(headers["x-nango-hmac-sha256"].encode(), good_hmac.encode())
        verified = verified and configured
    if len(body) > BODY_LIMIT:
        expected = "413"
    elif not verified:
        expected = "401"
    else:
        expected = "200" if _is_json(body) else "400"
    return body, headers, expected


@HTTP
@given(delivery=deliveries(), trailing_slash=st.booleans())
def test_http_answers_only_what_the_signature_and_body_deserve(
    http: TestClient, delivery: tuple[bytes, dict[str, str], str], trailing_slash: bool
) -> None:
    body, headers, expected = delivery
    event(expected)
    path = "/webhooks/nango/" if trailing_slash else "/webhooks/nango"
    response = http.post(path, content=body, headers=headers)
    assert str(response.status_code) == expected, response.text
    assert not response.history  # never a redirect, with or without the trailing slash
    if expected == "200":
        assert response.json()["status"] in {"applied", "recorded", "duplicate", "failed"}
    else:
        assert response.json()["error"]["code"]


raw_header_names = st.sampled_from(
    [
        b"x-nango-hmac-sha256",
        b"x-nango-signature",
        b"content-length",
        b"content-type",
        b"user-agent",
        b"x-request-id",
        b"x-forwarded-for",
    ]
)


SINGLE_HEADERS = (b"authorization", b"x-nango-hmac-sha256", b"x-nango-signature")


@HTTP
@given(
    body=st.binary(max_size=BODY_LIMIT + 300),
    headers=st.lists(st.tuples(raw_header_names, header_values), max_size=8),
    sign_it=st.booleans(),
)
def test_raw_header_bytes_never_cause_a_server_error(
    http: TestClient, body: bytes, headers: list[tuple[bytes, bytes]], sign_it: bool
) -> None:
    """Header bytes no HTTP client would send (non-ASCII, NUL, blank) go straight to the app."""
    if sign_it:
        headers = [
            *[(name, value) for name, value in headers if name != b"x-nango-hmac-sha256"],
            (b"x-nango-hmac-sha256", hmac_hex(TEST_SIGNING_KEY.encode(), body)),
        ]
    assert http.portal is not None
    response = http.portal.call(
        functools.partial(raw_request, http.app, headers=headers, body=body)
    )
    declared = any(name == b"content-length" for name, _ in headers)
    maybe_too_large = {413} if declared else set()
    names = [name for name, _ in headers]
    if any(names.count(name) > 1 for name in SINGLE_HEADERS):
        # A credential given twice is refused before anything else (issue 13, point 5).
        assert response.status == 400
    elif len(body) > BODY_LIMIT:
        assert response.status == 413
    elif sign_it:
        assert response.status in {200 if _is_json(body) else 400} | maybe_too_large
    else:
        assert response.status in {401} | maybe_too_large


@pytest.mark.parametrize(
    "value", [b"\xb2", b"\xb9\xb3", "٣".encode(), b"1\xb2", b"+5", b"-1", b" 12 ", b"\xff"]
)
def test_a_content_length_of_unicode_digits_is_not_a_server_error(
    http: TestClient, value: bytes
) -> None:
    """``str.isdigit`` is true for superscripts and other scripts' digits, which ``int`` refuses."""
    body = b'{"type":"auth"}'
    headers = [(b"content-length", value), (b"x-nango-hmac-sha256", b"0" * 64)]
    assert http.portal is not None
    response = http.portal.call(
        functools.partial(raw_request, http.app, headers=headers, body=body)
    )
    assert response.status == 401
