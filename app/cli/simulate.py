"""``nango-registry simulate KIND``: send the webhook Nango would send, to a running service.

For developing against this service before any real Nango webhook reaches a laptop. The body is
built as Nango builds it (docs/nango.md sections 2 and 4: compact JSON, keys sorted at every
level, non-ASCII unescaped; the fields of each type, auth bodies alone naming ``environment``),
signed with the configured signing key for the environment (``X-Nango-Hmac-Sha256``, HMAC-SHA256
over the raw bytes) and posted. What was sent and what the service answered go to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx2

from app import __version__
from app.settings import Settings, SigningKey, load_settings

# What Nango says when a token refresh fails at the provider (tests/fixtures/webhook-vectors.json).
REFRESH_ERROR = {
    "type": "refresh_token_external_error",
    "description": "The external API returned an error when trying to refresh the access token."
    " Please try again later.",
}
CREATION_ERROR = {"type": "invalid_callback", "description": "some error"}
SYNC_ERROR = {"type": "script_http_error", "description": "An error occurred during an HTTP call"}
AUTH_KINDS = ("creation", "override", "refresh", "refresh-failed", "deletion")
KINDS = (*AUTH_KINDS, "sync", "forward")


@dataclass(frozen=True, slots=True)
class Simulated:
    """What a simulated webhook is about; the body is built from these alone."""

    kind: str
    connection_id: str
    integration: str = "github"
    environment: str = "prod"
    tags: dict[str, str] = field(default_factory=dict)
    failure: bool = False
    auth_mode: str = "OAUTH2"
    error: dict[str, str] | None = None
    sync_name: str = "issues"
    model: str = "GithubIssue"
    sync_type: str = "INCREMENTAL"
    at: datetime | None = None  # a sync's end (failedAt, queryTimeStamp); default now
    started_at: datetime | None = None  # a failed sync's startedAt; default ``at``
    results: dict[str, int] = field(
        default_factory=lambda: {"added": 1, "updated": 0, "deleted": 0}
    )
    payload: Any = None
    checkpoints: dict[str, Any] | None = None


def nango_json(payload: Any) -> bytes:
    """Serialise like Nango: compact, keys sorted at every level, non-ASCII unescaped."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def _timestamp(at: datetime | None) -> str:
    moment = (at or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def auth_payload(event: Simulated) -> dict[str, Any]:
    operation = "refresh" if event.kind == "refresh-failed" else event.kind
    success = not (event.failure or event.kind == "refresh-failed")
    payload: dict[str, Any] = {
        "from": "nango",
        "type": "auth",
        "connectionId": event.connection_id,
        "providerConfigKey": event.integration,
        "provider": event.integration,
        "authMode": event.auth_mode,
        "environment": event.environment,
        "operation": operation,
        "success": success,
    }
    failed_creation = operation == "creation" and not success
    # A failed creation carries no tags (docs/nango.md section 4): no connection exists.
    if event.tags and not failed_creation:
        payload["tags"] = event.tags
    if not success:
        default = CREATION_ERROR if operation == "creation" else REFRESH_ERROR
        payload["error"] = event.error or default
    return payload


def sync_payload(event: Simulated) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "from": "nango",
        "type": "sync",
        "connectionId": event.connection_id,
        "providerConfigKey": event.integration,
        "syncName": event.sync_name,
        "syncVariant": "base",
        "model": event.model,
        "syncType": event.sync_type,
        "success": not event.failure,
    }
    at = _timestamp(event.at)
    if event.failure:
        started = _timestamp(event.started_at or event.at)
        payload.update(error=event.error or SYNC_ERROR, startedAt=started, failedAt=at)
    else:
        payload.update(responseResults=event.results, modifiedAfter=at, queryTimeStamp=at)
        if event.checkpoints is not None:
            payload["checkpoints"] = event.checkpoints
    return payload


def forward_payload(event: Simulated) -> dict[str, Any]:
    return {
        "from": event.integration,  # a forward names the provider, not "nango"
        "type": "forward",
        "connectionId": event.connection_id,
        "providerConfigKey": event.integration,
        "payload": event.payload if event.payload is not None else {"simulated": True},
    }


def build_body(event: Simulated) -> bytes:
    """The exact bytes Nango would send for ``event``."""
    if event.kind == "sync":
        return nango_json(sync_payload(event))
    if event.kind == "forward":
        return nango_json(forward_payload(event))
    return nango_json(auth_payload(event))


def signing_key_for(keys: tuple[SigningKey, ...], environment: str) -> SigningKey | None:
    """The key bound to ``environment``, else one bound to none (it serves every environment)."""
    bound = [key for key in keys if key.environment == environment]
    unbound = [key for key in keys if key.environment is None]
    candidates = bound or unbound
    return candidates[0] if candidates else None


def sign(key: SigningKey, body: bytes) -> str:
    return hmac.new(key.key, body, hashlib.sha256).hexdigest()


def parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: a tag is KEY=VALUE")
    return key.strip().lower(), value


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "simulate",
        help="send a signed webhook as Nango would, to a running service",
        description="Build the body Nango would send, sign it with the configured key for its"
        " environment and post it; prints what was sent and what the service answered.",
    )
    parser.add_argument("kind", choices=KINDS, help="which webhook")
    parser.add_argument("--connection", help="connection ID (default: a new UUID, as Nango makes)")
    parser.add_argument("--integration", default="github", help="providerConfigKey (github)")
    parser.add_argument("--environment", help="Nango environment (default NANGO_ENVIRONMENT)")
    parser.add_argument("--end-user", help="tag end_user_id")
    parser.add_argument("--organization", help="tag organization_id")
    parser.add_argument("--email", help="tag end_user_email")
    parser.add_argument("--tag", action="append", type=parse_tag, default=[], help="KEY=VALUE")
    parser.add_argument(
        "--failure", action="store_true", help="the failed variant (refresh-failed = refresh)"
    )
    parser.add_argument("--auth-mode", default="OAUTH2", help="authMode of auth webhooks")
    parser.add_argument("--url", help="the receiver (default: http://HOST:PORT/webhooks/nango)")
    parser.set_defaults(handler=run)


def event_from(args: argparse.Namespace, settings: Settings) -> Simulated:
    tags = dict(args.tag)
    owner = {"end_user_id": args.end_user, "organization_id": args.organization}
    owner["end_user_email"] = args.email
    tags.update({key: value for key, value in owner.items() if value})
    return Simulated(
        kind=args.kind,
        connection_id=args.connection or str(uuid.uuid4()),
        integration=args.integration,
        environment=args.environment or settings.nango_environment,
        tags=tags,
        failure=args.failure,
        auth_mode=args.auth_mode,
    )


def default_url(settings: Settings) -> str:
    host = settings.host
    if host in {"0.0.0.0", "::", ""}:  # noqa: S104 (an address to reach, not one to bind)
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}/webhooks/nango"


def _fail(message: str) -> int:
    print(f"nango-registry: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    event = event_from(args, settings)
    key = signing_key_for(settings.signing_keys, event.environment)
    if key is None:
        return _fail(
            f"no signing key for environment {event.environment!r}:"
            " set NANGO_WEBHOOK_SIGNING_KEYS (the same value the service uses)"
        )
    body = build_body(event)
    url = args.url or default_url(settings)
    headers = {
        "content-type": "application/json",
        "user-agent": f"nango-registry-simulate/{__version__}",
        "x-nango-hmac-sha256": sign(key, body),
    }
    print(f"POST {url}")
    print(body.decode())
    try:
        response = httpx2.post(url, content=body, headers=headers, timeout=20.0)
    except httpx2.HTTPError as error:
        return _fail(f"nothing answered at {url} ({error}): is the service running (make run)?")
    print(f"{response.status_code} {response.text}")
    return 0 if response.is_success else 1
