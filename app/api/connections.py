"""The lookup API: ``/v1/connections``, one connection, its history, an end user's summary.

Every route authenticates first (a bad key is a 401 before any 400) and is counted in
``nango_registry_lookups{route}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps

from starlette.requests import Request
from starlette.routing import Route

from app.api import cursors
from app.api.auth import require_api_key
from app.api.schemas import (
    ConnectionSelector,
    connection_to_json,
    event_to_json,
    parse_connection_query,
    parse_page,
    parse_selector,
    parse_summary_query,
    storable,
)
from app.connections import queries
from app.connections.model import Connection
from app.db.database import Transaction
from app.errors import NotFound
from app.logs import get_logger
from app.metrics import LOOKUPS
from app.responses import JSONResponse
from app.state import app_state

log = get_logger(__name__)

Handler = Callable[[Request], Awaitable[JSONResponse]]


def lookup(route: str) -> Callable[[Handler], Handler]:
    counter = LOOKUPS.labels(route=route)

    def decorate(handler: Handler) -> Handler:
        @wraps(handler)
        async def wrapper(request: Request) -> JSONResponse:
            counter.inc()
            # An unreachable database becomes a 503 in the app-wide handler (app.errors).
            await require_api_key(request)
            return await handler(request)

        return wrapper

    return decorate


async def _addressed_connection(
    tx: Transaction, request: Request, selector: ConnectionSelector
) -> Connection:
    """The connection the path (and ``integration_id`` / ``environment``) names."""
    connection_id = request.path_params["connection_id"]
    if not storable(connection_id):
        raise NotFound(f"no connection {connection_id!r}", code="connection_not_found")
    return await queries.get_connection(
        tx,
        connection_id=connection_id,
        integration_id=selector.integration_id,
        environment=selector.environment,
    )


@lookup("list_connections")
async def list_connections(request: Request) -> JSONResponse:
    query = parse_connection_query(request.query_params)
    settings = app_state(request).settings
    after_id = None
    if query.cursor is not None:
        after_id = cursors.decode_cursor(
            settings, route="connections", cursor=query.cursor, scope=query.scope()
        )
    async with app_state(request).database.reader() as tx:
        page = await queries.find_connections(
            tx, limit=query.limit, after_id=after_id, **query.scope()
        )
    next_cursor = None
    if page.next_after_id is not None:
        next_cursor = cursors.encode_cursor(
            settings, route="connections", after_id=page.next_after_id, scope=query.scope()
        )
    return JSONResponse(
        {"data": [connection_to_json(row) for row in page.items], "next_cursor": next_cursor}
    )


@lookup("get_connection")
async def get_connection(request: Request) -> JSONResponse:
    selector = parse_selector(request.query_params)
    async with app_state(request).database.reader() as tx:
        connection = await _addressed_connection(tx, request, selector)
    return JSONResponse({"data": connection_to_json(connection)})


@lookup("connection_events")
async def connection_events(request: Request) -> JSONResponse:
    selector = parse_selector(request.query_params, paginated=True)
    page_query = parse_page(request.query_params)
    settings = app_state(request).settings
    async with app_state(request).database.reader() as tx:
        connection = await _addressed_connection(tx, request, selector)
        scope = {"connection": connection.id}
        after_id = None
        if page_query.cursor is not None:
            after_id = cursors.decode_cursor(
                settings, route="events", cursor=page_query.cursor, scope=scope
            )
        page = await queries.find_history(
            tx, connection_pk=connection.id, limit=page_query.limit, after_id=after_id
        )
    next_cursor = None
    if page.next_after_id is not None:
        next_cursor = cursors.encode_cursor(
            settings, route="events", after_id=page.next_after_id, scope=scope
        )
    return JSONResponse(
        {
            "data": [event_to_json(entry) for entry in page.items],
            "next_cursor": next_cursor,
        }
    )


@lookup("end_user_summary")
async def end_user_summary(request: Request) -> JSONResponse:
    environment = parse_summary_query(request.query_params)
    end_user_id = request.path_params["end_user_id"]
    summaries: list[queries.IntegrationSummary] = []
    if storable(end_user_id):
        async with app_state(request).database.reader() as tx:
            summaries = await queries.end_user_summary(
                tx, end_user_id=end_user_id, environment=environment
            )
    return JSONResponse(
        {
            "data": {
                "end_user_id": end_user_id,
                "integrations": [
                    {
                        "integration_id": item.integration_id,
                        "environment": item.environment,
                        "connected": item.connected,
                        "needs_reauthorization": item.needs_reauthorization,
                        "connection_count": item.connection_count,
                        "connection": connection_to_json(item.connection),
                    }
                    for item in summaries
                ],
            }
        }
    )


ROUTES = [
    Route("/v1/connections", list_connections, methods=["GET"]),
    # Legacy connection IDs were chosen by customers and may contain "/", hence ":path"; the
    # app mounts catch-all paths last, so ".../events" reaches its own route.
    Route("/v1/connections/{connection_id:path}/events", connection_events, methods=["GET"]),
    Route("/v1/connections/{connection_id:path}", get_connection, methods=["GET"]),
    Route("/v1/end-users/{end_user_id}/summary", end_user_summary, methods=["GET"]),
]
