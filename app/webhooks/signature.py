"""Webhook signature verification over the raw body bytes.

Nango signs the exact bytes it sends (compact JSON, keys sorted, UTF-8 unescaped), so the
signature is checked before and independently of any parsing. Verification is total: any
header value and any body yield a key or None, never an exception.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from app.settings import SigningKey


def _normalise(header: bytes | None) -> bytes | None:
    if header is None:
        return None
    # bytes.lower() and strip() touch ASCII only, so any byte string is safe here.
    return header.strip().lower()


def verify_signature(
    *,
    body: bytes,
    hmac_header: bytes | None,
    legacy_header: bytes | None,
    keys: Iterable[SigningKey],
    accept_legacy: bool,
) -> SigningKey | None:
    """Return the key that signed ``body``, or None.

    ``X-Nango-Hmac-Sha256`` is HMAC-SHA256(key, body) in lowercase hex. The deprecated
    ``X-Nango-Signature`` is SHA-256(key + body), open to length extension, so it is accepted
    only when explicitly enabled and only when the HMAC header is absent (a sender that can
    produce the HMAC header never needs the weaker one).
    """
    received = _normalise(hmac_header)
    if received is not None:
        sign = _hmac_sha256
    elif accept_legacy and legacy_header is not None:
        received = _normalise(legacy_header)
        sign = _legacy_sha256
    else:
        return None
    assert received is not None
    matched: SigningKey | None = None
    for key in keys:
        # Every key is compared, so the time taken does not say which one matched.
        if hmac.compare_digest(sign(key.key, body), received) and matched is None:
            matched = key
    return matched


def _hmac_sha256(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).hexdigest().encode("ascii")


def _legacy_sha256(key: bytes, body: bytes) -> bytes:
    return hashlib.sha256(key + body).hexdigest().encode("ascii")


class WrongEnvironment(Exception):
    """The body names an environment its signing key is not bound to."""


def environment_of(
    keys: Iterable[SigningKey], signed_with: SigningKey, named: str | None
) -> str | None:
    """The environment a verified delivery belongs to, or WrongEnvironment.

    Only auth bodies name an ``environment`` (docs/nango.md, Corrections 1). A body that names none
    belongs to its key's environment; one that names another than its key's is refused. The
    same secret may be listed for several environments (``prod=K,dev=K``): every entry holding
    it signed the body, and one of them must allow what it names; naming none, it belongs to
    the key's only environment, or to none known when the key serves several.
    """
    bound = {entry.environment for entry in keys if entry.key == signed_with.key}
    if None in bound:
        return named
    if named is None:
        return next(iter(bound)) if len(bound) == 1 else None
    if named in bound:
        return named
    raise WrongEnvironment(named)
