"""``/v1/connect-sessions``: a Nango Connect session for one of your users, and its outcome.

The owner fields become Nango's tags (``end_user_id``, ``organization_id``...), so the auth
webhook that reports the new connection says whose it is. The session's own ID travels as one
more tag (``app.connections.sessions``), so ``GET /v1/connect-sessions/{session_id}`` can tell
a backend when its user's Connect flow produced a connection, holding the request open until
then (woken by the change feed) for up to ``wait`` seconds.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from app.api.inputs import parse_body, parse_query
from app.api.keys import require_api_key
from app.api.openapi import operation
from app.api.shapes import (
    ConnectSessionRequest,
    ConnectSessionStatus,
    ConnectSessionWait,
    NewConnectSession,
    NoQuery,
    connection_json,
)
from app.api.upstream import nango_errors
from app.connections.sessions import (
    SESSION_TAG,
    SessionState,
    new_session_id,
    remember_session,
    session_state,
)
from app.db.types import utcnow
from app.errors import CONNECT_SESSION_NOT_FOUND, NotFound
from app.logs import get_logger
from app.responses import JSONResponse
from app.state import AppState, app_state

log = get_logger(__name__)

# How long Nango's Connect sessions last, if its answer's expires_at cannot be read.
NANGO_SESSION_LIFETIME = timedelta(minutes=30)


def _expiry(value: Any) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return utcnow() + NANGO_SESSION_LIFETIME
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@operation(
    id="createConnectSession",
    summary="A Nango Connect session for one of your users (tags carry the owner)",
    answers={201: NewConnectSession},
    errors=(400, 403, 413, 502, 503),
    query=NoQuery,
    body=ConnectSessionRequest,
)
async def create_connect_session(request: Request) -> JSONResponse:
    await require_api_key(request, write=True)
    parse_query(NoQuery, request.query_params)
    payload = await parse_body(ConnectSessionRequest, request)
    session_id = new_session_id()
    body: dict[str, Any] = {"tags": {**payload.nango_tags(), SESSION_TAG: session_id}}
    if payload.allowed_integrations:
        body["allowed_integrations"] = payload.allowed_integrations
    state = app_state(request)
    with nango_errors():
        session = await state.nango.create_connect_session(body)
    async with state.database.transaction() as tx:
        await remember_session(
            tx,
            session_id=session_id,
            environment=state.settings.nango_environment,
            end_user_id=payload.end_user_id,
            organization_id=payload.organization_id,
            expires_at=_expiry(session["expires_at"]),
        )
    log.info("connect_session_created", end_user_id=payload.end_user_id, session_id=session_id)
    return JSONResponse({**session, "session_id": session_id}, status_code=201)


async def _look(state: AppState, session_id: str) -> SessionState:
    async with state.database.reader() as tx:
        found = await session_state(tx, session_id)
    if found is None:
        raise NotFound("no Connect session with this ID", code=CONNECT_SESSION_NOT_FOUND)
    return found


@operation(
    id="getConnectSession",
    summary="Whether a Connect session produced a connection (long poll with `wait`)",
    answers={200: ConnectSessionStatus},
    errors=(400, 404, 503),
    query=ConnectSessionWait,
)
async def get_connect_session(request: Request) -> JSONResponse:
    await require_api_key(request)
    query = parse_query(ConnectSessionWait, request.query_params)
    session_id = request.path_params["session_id"]
    state = app_state(request)
    deadline = time.monotonic() + query.wait
    while True:
        ticket = state.feed_signal.ticket()
        found = await _look(state, session_id)
        remaining = deadline - time.monotonic()
        if found.status != "pending" or remaining <= 0 or state.feed_signal.closed:
            break
        await state.feed_signal.wait(ticket, remaining)
    connection = None if found.connection is None else connection_json(found.connection)
    return JSONResponse({"data": {"status": found.status, "connection": connection}})


routes = [
    Route("/v1/connect-sessions", create_connect_session, methods=["POST"]),
    Route("/v1/connect-sessions/{session_id:segment}", get_connect_session, methods=["GET"]),
]
