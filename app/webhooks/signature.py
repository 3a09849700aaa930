"""Webhook signature verification over the raw body bytes.

Nango signs the exact bytes it sends (compact JSON, keys sorted, UTF-8 unescaped), so the
signature is checked before and independently of any parsing. Verification is total: any
header value and any body yield a key or None, never an exception.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from enum import StrEnum

from app.settings import SigningKey


class Refusal(StrEnum):
    """Why a signature was refused: logged and counted (a fixed set of metric labels), never
    answered (every refusal gets the same 401)."""

    MISSING = "missing"  # no signature header at all
    MALFORMED = "malformed"  # not 64 hex digits: not a SHA-256 from anyone
    LEGACY_ONLY = (
        "legacy_only"  # only X-Nango-Signature, while NANGO_ACCEPT_LEGACY_SIGNATURE is off
    )
    MISMATCH = "mismatch"  # well formed, but no configured key signed this body
    ENVIRONMENT = "environment"  # the key that signed it is bound to another environment
    DUPLICATE = "duplicate_header"  # a signature header given twice (app.middleware, a 400)


def _normalise(header: bytes) -> bytes:
    # bytes.lower() and strip() touch ASCII only, so any byte string is safe here.
    return header.strip().lower()


_HEX = frozenset(b"0123456789abcdef")


def _well_formed(digest: bytes) -> bool:
    return len(digest) == 64 and _HEX.issuperset(digest)


def check_signature(
    *,
    body: bytes,
    hmac_header: bytes | None,
    legacy_header: bytes | None,
    keys: Iterable[SigningKey],
    accept_legacy: bool,
) -> SigningKey | Refusal:
    """Return the key that signed ``body``, or why none did.

    ``X-Nango-Hmac-Sha256`` is HMAC-SHA256(key, body) in lowercase hex. The deprecated
    ``X-Nango-Signature`` is SHA-256(key + body), open to length extension, so it is accepted
    only when explicitly enabled and only when the HMAC header is absent (a sender that can
    produce the HMAC header never needs the weaker one).
    """
    if hmac_header is not None:
        received, sign = _normalise(hmac_header), _hmac_sha256
    elif legacy_header is None:
        return Refusal.MISSING
    elif not accept_legacy:
        return Refusal.LEGACY_ONLY
    else:
        received, sign = _normalise(legacy_header), _legacy_sha256
    if not _well_formed(received):
        return Refusal.MALFORMED
    matched: SigningKey | None = None
    for key in keys:
        # Every key is compared, so the time taken does not say which one matched.
        if hmac.compare_digest(sign(key.key, body), received) and matched is None:
            matched = key
    return Refusal.MISMATCH if matched is None else matched


def verify_signature(
    *,
    body: bytes,
    hmac_header: bytes | None,
    legacy_header: bytes | None,
    keys: Iterable[SigningKey],
    accept_legacy: bool,
) -> SigningKey | None:
    """The key that signed ``body``, or None (``check_signature`` says why)."""
    result = check_signature(
        body=body,
        hmac_header=hmac_header,
        legacy_header=legacy_header,
        keys=keys,
        accept_legacy=accept_legacy,
    )
    return None if isinstance(result, Refusal) else result


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
