"""Secrets are derived, stable and distinct; signatures verify with the standardwebhooks library."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from app.subscriptions import signing


def test_secret_is_derived_stably_and_differs_by_id_salt_and_key() -> None:
    one = signing.derive_secret("key", subscription_id=1, salt="a")
    assert one == signing.derive_secret("key", subscription_id=1, salt="a")
    assert one.startswith("whsec_")
    assert len(base64.b64decode(one.removeprefix("whsec_"))) == 32
    others = {
        signing.derive_secret("key", subscription_id=2, salt="a"),
        signing.derive_secret("key", subscription_id=1, salt="b"),
        signing.derive_secret("other", subscription_id=1, salt="a"),
    }
    assert one not in others
    assert len(others) == 3
    assert signing.secret_check(one) != one
    assert len(signing.new_salt()) == 32


def test_standardwebhooks_verifies_what_is_signed() -> None:
    secret = signing.derive_secret("key", subscription_id=7, salt=signing.new_salt())
    body = b'{"type":"connection.created","timestamp":"2026-01-01T00:00:00Z","data":{"id":1}}'
    message_id = signing.webhook_id(subscription_id=7, event_id=1)
    headers = signing.headers(secret, message_id=message_id, timestamp=int(time.time()), body=body)
    assert headers["webhook-id"] == "msg_7_1"
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers)["data"] == {"id": 1}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)
    wrong = signing.derive_secret("key", subscription_id=8, salt="x")
    with pytest.raises(WebhookVerificationError):
        Webhook(wrong).verify(body, headers)


def test_signature_matches_the_specification_by_hand() -> None:
    # Standard Webhooks' own example: id, timestamp and body joined by dots, HMAC-SHA256.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    signature = signing.sign(
        secret, message_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp=1614265330, body=body
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
