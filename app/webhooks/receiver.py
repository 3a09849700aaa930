"""``POST /webhooks/nango``: verify, store, apply, and only then answer.

Status codes are chosen for the sender: Nango retries only network errors and 5xx, and treats
every 4xx (429 included) as final. So a delivery this service could store later gets 503, one
that can never be accepted gets a 4xx, and 429 and 410 are never used.
"""

from __future__ import annotations

from typing import Any, NoReturn

from starlette.requests import Request
from starlette.routing import Route

from app.api.openapi import operation
from app.api.shapes import WebhookAnswer
from app.bodies import read_limited
from app.db.readiness import describe_error, underlying_error
from app.errors import (
    DRIVER_ERRORS,
    INVALID_BODY,
    INVALID_SIGNATURE,
    NOT_CONFIGURED,
    RETRY_AFTER_SECONDS,
    STORAGE_UNAVAILABLE,
    WEBHOOK_BODY_TIMEOUT,
    BadRequest,
    RequestTimeout,
    ServiceUnavailable,
    Unauthorized,
)
from app.logs import get_logger
from app.metrics import DATABASE_ERRORS, SIGNATURE_FAILURES, WEBHOOK_DELIVERIES
from app.middleware import log_fields
from app.responses import JSONResponse
from app.settings import Settings
from app.state import app_state
from app.webhooks.inbox import IngestResult, ingest, kept_headers
from app.webhooks.model import DeliveryOutcome
from app.webhooks.payloads import (
    Envelope,
    InvalidBody,
    body_environment,
    parse_body,
    read_envelope,
)
from app.webhooks.signature import Refusal, WrongEnvironment, check_signature, environment_of

log = get_logger(__name__)

# Whatever keeps a delivery from being committed; see _store.
STORAGE_ERRORS: tuple[type[Exception], ...] = (*DRIVER_ERRORS, OSError, TimeoutError)

# Nango's four types (docs/nango.md, section 4). A metric label takes no other value: a new or
# forged type is counted as "other", not as a series chosen by whoever holds the signing key.
KNOWN_TYPES = frozenset({"auth", "sync", "forward", "async_action"})


def metric_type(webhook_type: str) -> str:
    return webhook_type if webhook_type in KNOWN_TYPES else "other"


SIGNATURE_HEADERS = (
    {
        "name": "X-Nango-Hmac-Sha256",
        "in": "header",
        "required": False,
        "description": "hex HMAC-SHA256 of the raw body with a webhook signing key",
        "schema": {"type": "string"},
    },
    {
        "name": "X-Nango-Signature",
        "in": "header",
        "required": False,
        "description": "legacy sha256(key + body); only with NANGO_ACCEPT_LEGACY_SIGNATURE",
        "schema": {"type": "string"},
    },
)


@operation(
    id="receiveNangoWebhook",
    summary="Nango's webhooks, verified over the raw body and stored before the answer",
    answers={200: WebhookAnswer},
    errors=(400, 401, 413, 503),
    auth=False,
    parameters=SIGNATURE_HEADERS,
    extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}},
)
async def receive_webhook(request: Request) -> JSONResponse:
    settings = app_state(request).settings
    if not settings.signing_keys:
        log.error("webhook_refused", reason="NANGO_WEBHOOK_SIGNING_KEYS is not set")
        raise ServiceUnavailable(
            "no webhook signing key is configured: set NANGO_WEBHOOK_SIGNING_KEYS",
            code=NOT_CONFIGURED,
            headers={"Retry-After": "60"},
        )
    body = await _read_body(request, settings)
    payload, envelope = _verify(request, settings, body)
    result = await _store(request, settings, body, payload, envelope)
    _fetch_details_later(request, envelope, result)
    WEBHOOK_DELIVERIES.labels(type=metric_type(envelope.webhook_type), outcome=result.outcome).inc()
    # The request's access line says what came in and what became of it (app.middleware).
    log_fields(request.scope).update(
        type=envelope.webhook_type,
        operation=envelope.operation,
        success=envelope.success,
        environment=envelope.environment,
        integration_id=envelope.integration_id,
        connection_id=envelope.connection_id,
        outcome=result.outcome,
        delivery_id=result.delivery_id,
    )
    return JSONResponse({"status": result.outcome, "delivery_id": result.delivery_id})


async def _read_body(request: Request, settings: Settings) -> bytes:
    try:
        return await read_limited(
            request, settings.webhook_max_body_bytes, seconds=settings.request_body_timeout_seconds
        )
    except RequestTimeout as error:
        # A body cut short may be Nango's on a bad network: 503 so that it sends it again (a
        # 4xx would lose the webhook for good).
        raise ServiceUnavailable(
            error.message,
            code=WEBHOOK_BODY_TIMEOUT,
            headers={**error.headers, "Retry-After": RETRY_AFTER_SECONDS},
        ) from None


def _verify(request: Request, settings: Settings, body: bytes) -> tuple[Any, Envelope]:
    """The signature over the raw bytes, then the JSON, then the key's environment."""
    raw_headers = dict(request.headers.raw)
    key = check_signature(
        body=body,
        hmac_header=raw_headers.get(b"x-nango-hmac-sha256"),
        legacy_header=raw_headers.get(b"x-nango-signature"),
        keys=settings.signing_keys,
        accept_legacy=settings.nango_accept_legacy_signature,
    )
    if isinstance(key, Refusal):
        _refuse(key)
    try:
        payload = parse_body(body)
    except InvalidBody as error:
        WEBHOOK_DELIVERIES.labels(type="invalid", outcome="rejected").inc()
        log.warning("webhook_rejected", reason="not_json", error=str(error))
        raise BadRequest("the webhook body is not UTF-8 JSON", code=INVALID_BODY) from None
    try:
        environment = environment_of(settings.signing_keys, key, body_environment(payload))
    except WrongEnvironment:
        _refuse(Refusal.ENVIRONMENT, bound_to=key.environment)
    return payload, read_envelope(payload, environment=environment)


_LEGACY_HINT = (
    "only the legacy X-Nango-Signature header was sent: self-hosted Nango before 0.69.15 sends"
    " no other; set NANGO_ACCEPT_LEGACY_SIGNATURE=true to accept it"
)


def _refuse(reason: Refusal, **fields: Any) -> NoReturn:
    """One answer for every refusal (a sender learns nothing); the log and metric say why."""
    SIGNATURE_FAILURES.labels(reason=reason).inc()
    if reason == Refusal.LEGACY_ONLY:
        fields["hint"] = _LEGACY_HINT
    log.warning("webhook_rejected", reason="signature", refusal=str(reason), **fields)
    raise Unauthorized("the webhook signature does not verify", code=INVALID_SIGNATURE)


async def _store(
    request: Request, settings: Settings, body: bytes, payload: Any, envelope: Envelope
) -> IngestResult:
    try:
        return await ingest(
            app_state(request).database,
            body=body,
            payload=payload,
            envelope=envelope,
            headers=kept_headers(request.headers),
            dedupe_window_seconds=settings.webhook_dedupe_window_seconds,
            default_environment=settings.nango_environment,
        )
    except STORAGE_ERRORS as error:
        # Wider than the app-wide database handler on purpose: whatever kept this delivery from
        # being committed, Nango must retry it, so the answer is 503, never a 4xx or a 200.
        DATABASE_ERRORS.labels(operation="webhook").inc()
        cause = describe_error(underlying_error(app_state(request).database, error))
        log.error("webhook_not_stored", error_type=type(error).__name__, cause=cause)
        raise ServiceUnavailable(
            "the delivery could not be stored; retry later",
            code=STORAGE_UNAVAILABLE,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        ) from None


def _fetch_details_later(request: Request, envelope: Envelope, result: IngestResult) -> None:
    """After a committed creation or override, the connection's configuration and metadata are
    fetched in the background (app.connections.detail_fetches), in the environment whose secret
    key this service holds; reconcile fills in whatever this misses."""
    state = app_state(request)
    if (
        state.details is None
        or result.outcome != DeliveryOutcome.APPLIED
        or envelope.webhook_type != "auth"
        or envelope.operation not in ("creation", "override")
        or envelope.success is not True
        or envelope.environment != state.settings.nango_environment
        or not envelope.integration_id
        or not envelope.connection_id
    ):
        return
    state.details.request(
        environment=envelope.environment,
        integration_id=envelope.integration_id,
        connection_id=envelope.connection_id,
    )


routes = [
    Route("/webhooks/nango", receive_webhook, methods=["POST"]),
    # The same handler without a redirect: Nango follows 3xx, but a redirect costs a round trip
    # and some routers turn POST into GET on the way.
    Route("/webhooks/nango/", receive_webhook, methods=["POST"], include_in_schema=False),
]
