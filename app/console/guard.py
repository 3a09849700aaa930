"""Who may see the console, and the headers every one of its answers carries.

Basic Auth over the configured user name and password, compared in constant time: both sides
are hashed first, so neither the content nor the length of a guess changes the time taken, and
both comparisons always run. A browser sends the credentials with every request, so a signed
CSRF token guards each change (``app.console.csrf``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import Settings

# No inline script or style anywhere: the one stylesheet and the one script are served by the
# app itself; the chart is inline SVG drawn with presentation attributes, which CSP allows.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
REALM = 'Basic realm="nango-registry console", charset="UTF-8"'


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """The user name and password of a ``Basic`` Authorization header, or None."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else None


def check_credentials(settings: Settings, username: str, password: str) -> bool:
    expected_password = settings.console_password
    if not settings.console_username or expected_password is None:
        return False
    user_ok = hmac.compare_digest(_digest(username), _digest(settings.console_username))
    password_ok = hmac.compare_digest(
        _digest(password), _digest(expected_password.get_secret_value())
    )
    return user_ok & password_ok


class ConsoleGuard:
    """Basic Auth in front of every console route, and the security headers on every answer
    (the 401 included). The signed-in user name is left in ``scope["state"]["console_user"]``."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [
                    (name, value)
                    for name, value in message["headers"]
                    if name.lower() != b"cache-control"
                ]
                message["headers"] = [*kept, *SECURITY_HEADERS]
            await send(message)

        credentials = basic_credentials(Headers(scope=scope).get("authorization"))
        if credentials is None or not check_credentials(self.settings, *credentials):
            response = PlainTextResponse(
                "sign in to the console", status_code=401, headers={"WWW-Authenticate": REALM}
            )
            await response(scope, receive, send_with_headers)
            return
        scope.setdefault("state", {})["console_user"] = credentials[0]
        await self.app(scope, receive, send_with_headers)
