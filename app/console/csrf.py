"""CSRF tokens for the console's forms: signed with ``SECRET_KEY`` (itsdangerous), bound to the
signed-in user and expiring after ``CONSOLE_CSRF_MAX_AGE_SECONDS``.

The browser sends Basic Auth credentials with any request to the console, a forged cross-site
form included; such a form cannot read a page to learn a token, so a change without a valid one
is refused with 403.
"""

from __future__ import annotations

import hashlib

from itsdangerous import BadData, URLSafeTimedSerializer

from app.api.cursors import signing_key
from app.errors import CSRF_INVALID, CSRF_MISSING, Forbidden
from app.settings import Settings

SALT = "nango-registry.console.csrf"
FIELD = "csrf_token"


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(signing_key(settings), salt=SALT)


def user_tag(username: str) -> str:
    # The user's name is not put in the page: a digest of it is enough to bind the token.
    return hashlib.sha256(username.encode("utf-8")).hexdigest()[:16]


def issue_token(settings: Settings, username: str) -> str:
    return str(_serializer(settings).dumps({"u": user_tag(username)}))


def check_token(settings: Settings, username: str, token: object) -> None:
    """Return if ``token`` was issued here to ``username`` and has not expired; else 403."""
    if not isinstance(token, str) or not token:
        raise Forbidden("the form has no CSRF token: reload the page", code=CSRF_MISSING)
    try:
        payload = _serializer(settings).loads(token, max_age=settings.console_csrf_max_age_seconds)
    except BadData:
        raise Forbidden(
            "the form's CSRF token is invalid or expired: reload the page", code=CSRF_INVALID
        ) from None
    if not isinstance(payload, dict) or payload.get("u") != user_tag(username):
        raise Forbidden("the form's CSRF token is not yours: reload the page", code=CSRF_INVALID)
