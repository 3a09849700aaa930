"""``POST /webhooks/nango``.

Status codes are chosen for the sender: Nango retries only network errors and 5xx, and treats
every 4xx (429 included) as final. So a delivery this service could store later gets 503, one
that can never be accepted gets a 4xx, and 429 and 410 are never used.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.routing import Route

from app.errors import (
    DRIVER_ERRORS,
    RETRY_AFTER_SECONDS,
    BadRequest,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
)
from app.logs import get_logger
from app.metrics import DATABASE_ERRORS, SIGNATURE_FAILURES, WEBHOOK_DELIVERIES
from app.middleware import log_fields
from app.responses import JSONResponse
from app.state import app_state
from app.webhooks.inbox import ingest, kept_headers
from app.webhooks.payloads import InvalidBody, body_environment, parse_body, read_envelope
from app.webhooks.signature import verify_signature

log = get_logger(__name__)

# Whatever keeps a delivery from being committed; see receive_webhook.
STORAGE_ERRORS: tuple[type[Exception], ...] = (*DRIVER_ERRORS, OSError, TimeoutError)


async def read_limited(request: Request, limit: int) -> bytes:
    """Read the body, refusing it as soon as it is larger than ``limit``.

    Content-Length is checked first when given, and the count is enforced while reading, so a
    missing or lying Content-Length (or a chunked body) cannot make the process buffer more.
    """
    declared = request.headers.get("content-length")
    # isascii() too: str.isdigit() accepts digits int() refuses ("²", decoded from latin-1).
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"webhook body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"webhook body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def receive_webhook(request: Request) -> JSONResponse:
    state = app_state(request)
    settings = state.settings
    if not settings.signing_keys:
        log.error("webhook_refused", reason="NANGO_WEBHOOK_SIGNING_KEYS is not set")
        raise ServiceUnavailable(
            "no webhook signing key is configured: set NANGO_WEBHOOK_SIGNING_KEYS",
            code="not_configured",
            headers={"Retry-After": "60"},
        )
    try:
        body = await read_limited(request, settings.webhook_max_body_bytes)
    except ClientDisconnect:
        raise BadRequest("the client disconnected before sending the whole body") from None

    raw_headers = dict(request.headers.raw)
    key = verify_signature(
        body=body,
        hmac_header=raw_headers.get(b"x-nango-hmac-sha256"),
        legacy_header=raw_headers.get(b"x-nango-signature"),
        keys=settings.signing_keys,
        accept_legacy=settings.nango_accept_legacy_signature,
    )
    if key is None:
        SIGNATURE_FAILURES.labels(reason="mismatch").inc()
        log.warning("webhook_rejected", reason="signature")
        raise Unauthorized("the webhook signature does not verify", code="invalid_signature")

    try:
        payload = parse_body(body)
    except InvalidBody as error:
        WEBHOOK_DELIVERIES.labels(type="invalid", outcome="rejected").inc()
        log.warning("webhook_rejected", reason="not_json", error=str(error))
        raise BadRequest("the webhook body is not UTF-8 JSON", code="invalid_body") from None

    environment = body_environment(payload)
    # Every entry holding the same secret signed this body; one of them must allow its
    # environment (the same key may be listed for two environments, e.g. "prod=K,dev=K").
    if not any(
        entry.environment in (None, environment)
        for entry in settings.signing_keys
        if entry.key == key.key
    ):
        SIGNATURE_FAILURES.labels(reason="environment").inc()
        log.warning("webhook_rejected", reason="environment", bound_to=key.environment)
        raise Unauthorized(
            "the signing key is bound to another environment", code="invalid_signature"
        )

    envelope = read_envelope(payload)
    try:
        result = await ingest(
            state.database,
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
        log.error("webhook_not_stored", error_type=type(error).__name__)
        raise ServiceUnavailable(
            "the delivery could not be stored; retry later",
            code="storage_unavailable",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        ) from None

    WEBHOOK_DELIVERIES.labels(type=envelope.webhook_type, outcome=result.outcome).inc()
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


ROUTES = [
    Route("/webhooks/nango", receive_webhook, methods=["POST"]),
    # The same handler without a redirect: Nango follows 3xx, but a redirect costs a round trip
    # and some routers turn POST into GET on the way.
    Route("/webhooks/nango/", receive_webhook, methods=["POST"]),
]
