"""Subscription secrets and Standard Webhooks signatures.

A subscription's secret is derived, never stored: ``HMAC-SHA256(SECRET_KEY, "subscription:" id
":" salt)``, with a random salt kept on the row. A copy of the database (a backup, a replica, a
support dump) therefore holds no secret that could sign a message a consumer would accept, and
no encryption key has to be managed beside ``SECRET_KEY`` (the standard library has HMAC, not
a cipher). The price: changing ``SECRET_KEY`` changes every subscription's secret. The row keeps
a SHA-256 of its secret (``secret_check``, as API keys keep theirs) so the dispatcher notices
and refuses to sign with the wrong key instead of sending messages every consumer rejects.

Signatures are Standard Webhooks' (https://www.standardwebhooks.com): ``webhook-signature:
v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">``, keyed by the bytes
the ``whsec_`` secret encodes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"


def new_salt() -> str:
    return secrets.token_hex(16)


def derive_secret(secret_key: str, *, subscription_id: int, salt: str) -> str:
    """The ``whsec_...`` secret of a subscription: 32 bytes, base64."""
    message = f"subscription:{subscription_id}:{salt}".encode()
    key = hmac.new(secret_key.encode(), message, hashlib.sha256).digest()
    return PREFIX + base64.b64encode(key).decode()


def secret_check(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def webhook_id(*, subscription_id: int, event_id: int) -> str:
    """The same for every retry (and replay) of one event to one subscription."""
    return f"msg_{subscription_id}_{event_id}"


def sign(secret: str, *, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of one attempt."""
    key = base64.b64decode(secret.removeprefix(PREFIX))
    signed = message_id.encode() + b"." + str(timestamp).encode() + b"." + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, *, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id=message_id, timestamp=timestamp, body=body),
    }
