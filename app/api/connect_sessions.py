"""``POST /v1/connect-sessions``: a Nango Connect session for one of your users.

The owner fields become Nango's tags (``end_user_id``, ``organization_id``...), so the auth
webhook that reports the new connection says whose it is.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from app.api.inputs import parse_body, parse_query
from app.api.keys import require_api_key
from app.api.openapi import operation
from app.api.shapes import ConnectSession, ConnectSessionRequest, NoQuery
from app.api.upstream import nango_errors
from app.logs import get_logger
from app.responses import JSONResponse
from app.state import app_state

log = get_logger(__name__)


@operation(
    id="createConnectSession",
    summary="A Nango Connect session for one of your users (tags carry the owner)",
    answers={201: ConnectSession},
    errors=(400, 403, 413, 502, 503),
    query=NoQuery,
    body=ConnectSessionRequest,
)
async def create_connect_session(request: Request) -> JSONResponse:
    await require_api_key(request, write=True)
    parse_query(NoQuery, request.query_params)
    payload = await parse_body(ConnectSessionRequest, request)
    body: dict[str, Any] = {"tags": payload.nango_tags()}
    if payload.allowed_integrations:
        body["allowed_integrations"] = payload.allowed_integrations
    with nango_errors():
        session = await app_state(request).nango.create_connect_session(body)
    log.info("connect_session_created", end_user_id=payload.end_user_id)
    return JSONResponse(session, status_code=201)


routes = [Route("/v1/connect-sessions", create_connect_session, methods=["POST"])]
