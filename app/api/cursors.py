"""Opaque pagination cursors, signed with ``SECRET_KEY`` so a client can neither forge nor edit one.

A cursor carries the last row's id and a fingerprint of the filters it was issued for: replaying it
under other filters, or on another route (each route signs with its own salt), is refused with 400
``invalid_cursor`` instead of answering a page that belongs to another listing.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from itsdangerous import BadData, URLSafeSerializer

from app.errors import INVALID_CURSOR, BadRequest
from app.settings import Settings

# Without SECRET_KEY (tests, a single local process), one random key per process still makes
# cursors unforgeable; they just stop working after a restart. `nango-registry serve` sets
# SECRET_KEY itself when it is missing, so all of its workers share one key.
_PROCESS_KEY = secrets.token_urlsafe(32)


def signing_key(settings: Settings) -> str:
    """``SECRET_KEY``, or this process's own key; each use signs with its own salt."""
    return settings.secret_key.get_secret_value() if settings.secret_key else _PROCESS_KEY


def _serializer(settings: Settings, route: str) -> URLSafeSerializer:
    return URLSafeSerializer(signing_key(settings), salt=f"nango-registry.cursor.{route}")


def fingerprint(scope: Any) -> str:
    """A short digest of what a listing is filtered by (any JSON-serialisable value)."""
    canonical = json.dumps(scope, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def encode_cursor(
    settings: Settings, *, route: str, after_id: int | None, scope: Any
) -> str | None:
    """The cursor of the next page (None on the last page, when there is nothing after)."""
    if after_id is None:
        return None
    return str(_serializer(settings, route).dumps({"a": after_id, "f": fingerprint(scope)}))


def decode_cursor(settings: Settings, *, route: str, cursor: str | None, scope: Any) -> int | None:
    """The id a cursor continues after (None for the first page); 400 ``invalid_cursor`` for
    anything not issued here."""
    if cursor is None:
        return None
    try:
        payload = _serializer(settings, route).loads(cursor)
    except BadData:
        raise _invalid("cursor is not valid (tampered, expired key or from elsewhere)") from None
    if not isinstance(payload, dict):
        raise _invalid("cursor is not valid")
    after_id = payload.get("a")
    if isinstance(after_id, bool) or not isinstance(after_id, int) or after_id < 1:
        raise _invalid("cursor is not valid")
    if payload.get("f") != fingerprint(scope):
        raise _invalid("cursor was issued for other filters; repeat the same query parameters")
    return after_id


def _invalid(message: str) -> BadRequest:
    return BadRequest(message, code=INVALID_CURSOR, details={"parameter": "cursor"})
