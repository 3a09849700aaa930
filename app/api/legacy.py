"""``POST /v1/legacy/auth-hmac``: the digest the old public-key flow checks (self-hosted Nango
that still takes public keys), computed here so the key never reaches a browser."""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request
from starlette.routing import Route

from app.api.inputs import parse_body, parse_query
from app.api.keys import require_api_key
from app.api.openapi import operation
from app.api.shapes import LegacyHmac, LegacyHmacRequest, NoQuery
from app.errors import NotFound
from app.responses import JSONResponse
from app.state import app_state


def legacy_hmac(key: str, *, integration_id: str, connection_id: str) -> str:
    """HMAC-SHA256 of ``"<integration>:<connection>"`` (docs/nango.md, section 1)."""
    message = f"{integration_id}:{connection_id}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


@operation(
    id="legacyAuthHmac",
    summary="The HMAC the legacy public-key flow checks (404 when not configured)",
    answers={200: LegacyHmac},
    errors=(400, 403, 404, 503),
    query=NoQuery,
    body=LegacyHmacRequest,
)
async def create_legacy_auth_hmac(request: Request) -> JSONResponse:
    await require_api_key(request, write=True)
    parse_query(NoQuery, request.query_params)
    key = app_state(request).settings.nango_legacy_hmac_key
    if key is None or not key.get_secret_value():
        raise NotFound("NANGO_LEGACY_HMAC_KEY is not set: the legacy flow is off")
    payload = await parse_body(LegacyHmacRequest, request)
    digest = legacy_hmac(
        key.get_secret_value(),
        integration_id=payload.integration_id,
        connection_id=payload.connection_id,
    )
    return JSONResponse({"hmac": digest})


routes = [Route("/v1/legacy/auth-hmac", create_legacy_auth_hmac, methods=["POST"])]
