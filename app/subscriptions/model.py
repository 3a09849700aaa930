"""A subscription, one try at delivering to it, and the rules for what a subscription may be."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from urllib.parse import urlsplit

from app.connections.feed import EventType

# The feed's event types; a subscription names some of them, or none for all.
EVENT_TYPES = tuple(str(kind) for kind in EventType)
MAX_URL_LENGTH = 2048
# What a subscriber's answer is kept of, per attempt.
MAX_KEPT_BODY = 1024


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    # Deliveries are queued but not sent until it is resumed.
    PAUSED = "paused"
    # Only failed for SUBSCRIPTION_DISABLE_AFTER_SECONDS: nothing is queued or sent.
    DISABLED = "disabled"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Outcome(StrEnum):
    """How one HTTP attempt ended."""

    SUCCEEDED = "succeeded"  # 2xx
    FAILED = "failed"  # any other status
    TIMEOUT = "timeout"  # no complete answer within SUBSCRIPTION_TIMEOUT_SECONDS
    ERROR = "error"  # no answer: refused connection, DNS, TLS, reset; or nothing could be sent


SUBSCRIPTION_COLUMNS = (
    "id, url, event_types, end_user_id, organization_id, integration_id, status,"
    " secret_salt, secret_check, created_at, updated_at, failing_since, disabled_at"
)


@dataclass(frozen=True, slots=True)
class Subscription:
    id: int
    url: str
    event_types: list[str] | None
    end_user_id: str | None
    organization_id: str | None
    integration_id: str | None
    status: SubscriptionStatus
    secret_salt: str
    secret_check: str
    created_at: datetime
    updated_at: datetime
    failing_since: datetime | None
    disabled_at: datetime | None


ATTEMPT_COLUMNS = (
    "id, delivery_id, event_id, try_number, attempted_at, outcome, status_code, latency_ms,"
    " response_body, error"
)


@dataclass(frozen=True, slots=True)
class Attempt:
    id: int
    delivery_id: int
    event_id: int
    try_number: int
    attempted_at: datetime
    outcome: Outcome
    status_code: int | None
    latency_ms: int
    response_body: str | None
    error: str | None


def check_url(url: str, *, require_https: bool) -> str | None:
    """What is wrong with a subscriber's URL, or None.

    Plain http is accepted unless SUBSCRIPTION_REQUIRE_HTTPS: subscribers are usually internal
    services on a private network (http://billing.internal:8080), and every message is signed,
    so a consumer can tell a forged or altered one; set it when subscribers are reached over the
    internet, where the connection objects (emails, names) should not travel in clear.
    """
    if len(url) > MAX_URL_LENGTH:
        return f"at most {MAX_URL_LENGTH} characters"
    if any(ord(char) <= 32 or ord(char) == 127 for char in url):
        return "no spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        return "not a URL"
    allowed = ("https",) if require_https else ("http", "https")
    if parts.scheme not in allowed:
        return "must start with https://" if require_https else "must be an http or https URL"
    if not parts.hostname:
        return "names no host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (user:password@); put a token in the path instead"
    if parts.fragment:
        return "must not have a #fragment"
    return None
